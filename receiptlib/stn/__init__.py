"""Spatial Transformer in front of ResNet18: the paper's failed joint training and staged training (section VII).

A spatial transformer (Jaderberg et al. 2015; the Moodstocks slides in shared/seeds) is three pieces:
a localisation net that regresses transformation parameters from the image, a grid generator
(``F.affine_grid``) that maps every output pixel to a point of the input, and a bilinear sampler
(``F.grid_sample``) that reads the input there. The paper put one in front of ResNet and trained both
together from the start ("joint"): unsatisfactory. Their reading of the original paper, train the
classifier first and then the transformer together with it ("staged"), is implemented here too.

model.py       SpatialTransformer, STNClassifier, ResizeClassifier, build_model, stage2_model: the model
training.py    STNRecipe, train_stn (modes "resnet", "joint", "staged"), the clipped optimiser, the stage-1 branch
experiment.py  compare (the three-way experiment and its cache folder), hard_mask, load_comparison, snapshot_grid
summary.py     format_table, conclusion and the figures: reading a comparison (notebook 05)
"""
from .experiment import (HARD_PERSPECTIVE, HARD_ROTATION_DEG, compare, hard_mask, load_comparison, open_set_metrics,
                         snapshot_grid, summarise)
from .model import (TRANSFORMS, ResizeClassifier, SpatialTransformer, STNClassifier, build_model, stage2_model,
                    theta_scale_angle)
from .summary import (METHOD_NAMES, SLICE_NAMES, conclusion, format_table, learning_curves_figure, snapshot_figure,
                      theta_figure)
from .training import (MODES, STAGE1_FORMAT, ClippedAdamW, ClippedSGD, STNRecipe, STNResult, advance_schedule,
                       check_stage1, load_classifier_moments, make_optimizer, param_groups, stage1_checkpoint,
                       train_stn)

__all__ = ["TRANSFORMS", "SpatialTransformer", "STNClassifier", "ResizeClassifier", "theta_scale_angle", "build_model",
           "stage2_model", "MODES", "STNRecipe", "param_groups", "ClippedSGD", "ClippedAdamW", "make_optimizer",
           "STNResult", "STAGE1_FORMAT", "stage1_checkpoint", "check_stage1", "load_classifier_moments",
           "advance_schedule", "train_stn", "HARD_ROTATION_DEG", "HARD_PERSPECTIVE", "hard_mask", "open_set_metrics",
           "compare", "summarise", "load_comparison", "snapshot_grid", "METHOD_NAMES", "SLICE_NAMES", "format_table",
           "conclusion", "learning_curves_figure", "theta_figure", "snapshot_figure"]
