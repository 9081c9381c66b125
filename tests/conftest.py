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


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: the suite shares the cores with notebook kernels and subprocesses."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny folder data set of coloured shapes (train/val/test, Other in val and test): learnable in seconds."""
    from test_train import make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes") / "data")
