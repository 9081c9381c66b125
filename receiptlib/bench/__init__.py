"""Hardware timings (section VIII of the paper): images per second per backend of receiptlib.fast, each beside
the device's own ceiling.

- model alone: one preprocessed batch through the network (warm-up, then the median of repeats);
- end to end: read and decode JPEGs (draft mode), preprocess, model, Other decision, over a folder,
  with loader workers overlapping decoding and the model.

Each figure sits beside the ceiling of the same device measured in the same run (a large matrix product
at the backend's precision: fp32, bf16, int8; receiptlib.timing) and the model's FLOPs from torch's FLOP
counter (a multiply-add counts as 2 FLOPs: 3.63 GFLOP per 224 px ResNet18 image). Modules: setting (one
backend measured in this process; `BenchConfig`), runner (`bench`: every setting, each in its own
subprocess), tables (`to_frame`, `paper_table`, `table`).
"""
from __future__ import annotations

from .runner import bench
from .setting import DEFAULT_BACKENDS, PRECISION, BenchConfig, run_setting, synthetic_jpegs
from .tables import paper_table, table, to_frame

__all__ = ["DEFAULT_BACKENDS", "PRECISION", "BenchConfig", "bench", "paper_table", "run_setting",
           "synthetic_jpegs", "table", "to_frame"]
