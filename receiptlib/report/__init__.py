"""The report: the helper each notebook uses (notebook), the runner that executes notebooks/NN_*.ipynb in
order through papermill (runner), the README's results section (readme), the figures (plots), the tables
built from runs (sections) and the kernel-free tuner's page (tuner_page). Imports any library module; nothing in
the library imports it but cli and the tuner.
"""
from __future__ import annotations

from . import plots
from .notebook import Notebook, preset_dir, project_root, settings
from .readme import BEGIN, END, REPORT_FILE, summary, update_readme
from .runner import (NotebookFailed, describe_parameters, execute, machine, notebooks, relativize_project_paths, run_report,
                     training_precision)
from .sections import run_comparison

__all__ = ["BEGIN", "END", "REPORT_FILE", "Notebook", "NotebookFailed", "describe_parameters", "execute", "machine", "notebooks", "plots",
           "preset_dir", "project_root", "run_comparison", "relativize_project_paths", "run_report", "settings",
           "summary", "training_precision", "update_readme"]
