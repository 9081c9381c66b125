"""Spatial Transformer in front of the classifier (section VII): localise on the photo, classify the crop.

A spatial transformer (Jaderberg et al. 2015; the Moodstocks slides in shared/seeds) is three pieces: a
localisation net that regresses transformation parameters from the image, a grid generator (``F.affine_grid``)
that maps every output pixel to a point of the input, and a bilinear sampler (``F.grid_sample``) that reads the
input there. The paper put one in front of ResNet and trained both together from the start: unsatisfactory.
Here the transformer localises on a high-resolution view of the photo and samples the classifier's
low-resolution input from it (what it can gain: detail), and the experiment compares, from one stage-1
classifier with equal optimiser steps, no transformer, an identity transformer, joint and staged training.

geometry.py    rigid_theta / pixel_scale_angle (rotation rigid in the photo's pixels), oracle_theta (the
               perfect transformer from the manifest), hard_mask, circular_correlation
model.py       SpatialTransformer, STNClassifier (samples raw pixels, normalises after), ResizeClassifier
recipe.py      STNRecipe, Views (raw views of every split), the seeded batches, the rate schedules
training.py    train_stage1 / stage1_from_run, train_arm (ARMS), choose_loc_mult, oracle_scores
experiment.py  compare (every arm and seed, intervals against arm A, mechanism checks), load_comparison, snapshot_grid
summary.py     format_table, conclusion and the figures: reading a comparison (notebook 05)
"""
from . import geometry
from .experiment import REFERENCE, compare, load_comparison, paired_intervals, snapshot_grid
from .model import TRANSFORMS, ResizeClassifier, SpatialTransformer, STNClassifier, theta_scale_angle
from .summary import ARM_NAMES, SLICE_NAMES, conclusion, format_table, mechanism_figure, snapshot_figure, transform_figure
from .recipe import STNRecipe, Views, summed_rate
from .training import ARMS, STN_ARMS, ArmResult, choose_loc_mult, oracle_scores, stage1_from_run, train_arm, train_stage1

__all__ = ["geometry", "TRANSFORMS", "SpatialTransformer", "STNClassifier", "ResizeClassifier", "theta_scale_angle",
           "ARMS", "STN_ARMS", "STNRecipe", "Views", "ArmResult", "train_stage1", "stage1_from_run", "train_arm",
           "choose_loc_mult", "oracle_scores", "summed_rate", "REFERENCE", "compare", "paired_intervals",
           "load_comparison", "snapshot_grid", "ARM_NAMES", "SLICE_NAMES", "format_table", "conclusion",
           "transform_figure", "mechanism_figure", "snapshot_figure"]
