import os

import pytest

# Tests never show progress bars and never touch a display.
os.environ.setdefault("RECEIPTLIB_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def report_dirs(tmp_path_factory):
    """One data root (tiny synthetic data, tiny runs), figures and results folder for the whole session,
    so the notebooks share the tiny data set and the tiny trained run as they do in the real report."""
    root = tmp_path_factory.mktemp("report")
    dirs = {name: root / name for name in ("data", "figures", "results", "notebooks")}
    for path in dirs.values():
        path.mkdir()
    return dirs
