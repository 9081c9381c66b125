"""Deterministic loaders whose failures travel as data: a bad file never crashes inside a DataLoader worker."""
from __future__ import annotations

import logging
import random
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..common import LOADER_SHUFFLE, stream_seed
from .images import ImageReadError

log = logging.getLogger(__name__)


class Failed(NamedTuple):
    """What a loader worker returns instead of raising when a file cannot be read."""

    index: int
    path: str
    error: str


# ----------------------------------------------------------------------------------------------
# Loaders: deterministic, failures travel as data
# ----------------------------------------------------------------------------------------------

class SeededView:
    """Wraps a dataset for a DataLoader: ImageReadError becomes a ``Failed`` item, items come back as
    ``(x, y, index)``, and with a ``seed`` each item's random transform is seeded by
    ``stream_seed(seed, epoch, offset + index)``: one independent stream per (seed, epoch, image), so the
    augmentation of an image does not depend on the number of workers or on which worker loads it."""

    def __init__(self, dataset, seed: int | None, epoch: int = 0, *, offset: int = 0):
        self.dataset = dataset
        self.seed = seed
        self.epoch = epoch
        self.offset = offset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            if self.seed is None:
                x, y = self.dataset[index]
            else:
                s = stream_seed(self.seed, self.epoch, self.offset + int(index))
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(s)
                    py_state = random.getstate()
                    random.seed(s)
                    try:
                        x, y = self.dataset[index]
                    finally:
                        random.setstate(py_state)
        except ImageReadError as e:
            return Failed(int(index), e.path, str(e))
        return x, y, index


def collate_skip_failed(items):
    """Collate (x, y, index) items and ``Failed`` sentinels into ``(x, y, index, failures)``.

    ``x`` is None when every item of the batch failed.
    """
    ok = [it for it in items if not isinstance(it, Failed)]
    failures = [it for it in items if isinstance(it, Failed)]
    if not ok:
        return None, None, None, failures
    x = torch.stack([it[0] for it in ok])
    y = torch.as_tensor([int(it[1]) for it in ok], dtype=torch.long)
    idx = torch.as_tensor([int(it[2]) for it in ok], dtype=torch.long)
    return x, y, idx, failures


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive Python and NumPy seeds from it too
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


class ReceiptLoader:
    """Iterable over batches ``(x, y)`` (or ``(x, y, index)`` with ``with_index=True``).

    Each ``iter()`` is one epoch: shuffling and augmentation depend only on ``(seed, epoch)``, so a run is
    reproducible on CPU whatever the number of workers. Unreadable files: ``on_error="raise"`` raises one
    ``ImageReadError`` in the main process naming the file; ``"skip"`` drops them from the batch, appends
    them to ``failures`` (list of ``Failed``; ``epoch_failures`` for the last epoch only) and logs a warning
    per file (``log_failures=False`` leaves reporting to the caller).
    """

    def __init__(self, dataset, *, batch_size: int, shuffle: bool, workers: int = 0, seed: int | None = 0,
                 on_error: str | None = None, with_index: bool = False, drop_last: bool = False,
                 pin_memory: bool = False, epoch: int = 0, log_failures: bool = True):
        if on_error is None:
            on_error = getattr(dataset, "on_error", "raise")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r}: expected 'raise' or 'skip'")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        if workers < 0:
            raise ValueError(f"workers={workers}: expected >= 0")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.workers = workers
        self.seed = seed
        self.on_error = on_error
        self.with_index = with_index
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.epoch = epoch  # the epoch the next iter() will run; set it to resume
        self.log_failures = log_failures
        self.failures: list[Failed] = []
        self.epoch_failures: list[Failed] = []

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _loader(self, epoch: int):
        gen = None
        if self.seed is not None:
            gen = torch.Generator()
            gen.manual_seed(stream_seed(self.seed, epoch, LOADER_SHUFFLE))  # the shuffle order's own stream
        return DataLoader(SeededView(self.dataset, self.seed, epoch), batch_size=self.batch_size,
                          shuffle=self.shuffle, num_workers=self.workers, collate_fn=collate_skip_failed,
                          generator=gen, worker_init_fn=_seed_worker if self.workers else None,
                          drop_last=self.drop_last, pin_memory=self.pin_memory)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        self.epoch_failures = []
        for x, y, idx, failures in self._loader(epoch):
            if failures:
                if self.on_error == "raise":
                    others = f" (and {len(failures) - 1} more unreadable files in this batch)" if len(failures) > 1 else ""
                    f = failures[0]
                    raise ImageReadError(f.path, f.error[len(f.path) + 2:] + others
                                         + "; pass on_error='skip' to skip unreadable files")
                for f in failures if self.log_failures else ():
                    log.warning("skipped unreadable image: %s", f.error)
                self.epoch_failures += failures
                self.failures += failures
            if x is None:
                continue
            yield (x, y, idx) if self.with_index else (x, y)


def make_loader(dataset, *, batch_size: int, shuffle: bool, workers: int = 0, seed: int | None = 0,
                on_error: str | None = None, with_index: bool = False, drop_last: bool = False,
                pin_memory: bool = False, epoch: int = 0, log_failures: bool = True) -> ReceiptLoader:
    """A deterministic batch loader over ``dataset`` that reports bad files instead of crashing in a worker.

    ``seed=None`` leaves shuffling and augmentation to torch's global RNG. ``on_error`` defaults to the
    dataset's own ``on_error`` ("raise" if it has none). See ``ReceiptLoader``.
    """
    return ReceiptLoader(dataset, batch_size=batch_size, shuffle=shuffle, workers=workers, seed=seed,
                         on_error=on_error, with_index=with_index, drop_last=drop_last,
                         pin_memory=pin_memory, epoch=epoch, log_failures=log_failures)
