"""Batch prediction over files and folders, with an error row per unreadable input; CSV and Mozgalo writers.

Model-agnostic and torch-free: ``model(x)`` maps a (N, 3, H, W) float32 numpy batch to the logits of the
known classes (an `serving.OnnxPredictor`, a `fast` predictor, or a torch module, which is wrapped); photos
are prepared by ``preprocessing`` (`photos.Preprocessing`: the run's or the model card's input rule). An
optional ``other_fn(logits) -> (is_other, other_score)`` decides Other (a detector of ``receiptlib.openset``
as ``openset.as_decision(detector).other``, e.g. from a thresholds file). Without it the label is the
argmax and ``other_score = -max_logit`` (higher means more likely Other, as the paper's max-logit rule of
section VI).

Every input appears exactly once in the result: a folder expands to its image files, a file given by
name is taken whatever its extension, and a path that does not exist, a folder without images or an
unreadable image gets a row with an empty label and the error message. Bad files never stop the batch.

Decoding runs in ``workers`` threads ahead of the model (JPEG draft decoding, resizing and ONNX Runtime all
release the GIL, so photos of the next batch decode while the model runs this one); ``workers=0`` decodes
in the calling thread.
"""
from __future__ import annotations

import re
import sys
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from . import io
from .common import OTHER, as_known_classes, pick_device, progress
from .photos import ImageReadError, Preprocessing, image_files

COLUMNS = ["path", "label", "other_score", "top1", "top1_logit", "top2", "top2_logit", "top3", "top3_logit", "error"]
TOP_K = 3
BATCH_SIZE = 16
WORKERS = 1  # decoding threads beside the model; measured on 2 cores in docs/decisions.md
AHEAD = 2    # batches decoding while the model runs one: bounded memory on a folder of any size


def expand_inputs(paths: Sequence[str | Path], *, recursive: bool = True) -> list[tuple[str, str]]:
    """Turn the command-line inputs into ``(path, error)`` rows, ``error == ""`` for a file to read.

    Folders expand to their image files (by extension, recursively unless ``recursive=False``, symlinked
    folders included, sorted by relative path; hidden files skipped; `photos.image_files`). A file named
    explicitly is kept whatever its extension. A file reached twice (named and inside a named folder) is
    kept once, at its first place.
    """
    rows: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(p: Path, error: str = "") -> None:
        key = p.resolve() if p.exists() else p.absolute()
        if key in seen:
            return
        seen.add(key)
        rows.append((str(p), error))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            unreadable: list = []
            files = image_files(p, recursive=recursive, unreadable=unreadable)
            for folder, error in unreadable:  # its photos cannot be listed: the folder gets the error row
                add(folder, error)
            if not files and not unreadable:
                add(p, f"{p}: folder contains no image files"
                       + ("" if recursive else " (not searched recursively)"))
            for f in files:
                add(f)
        elif p.exists():
            add(p)
        else:
            add(p, f"{p}: file not found")
    return rows


def predict_paths(paths: Sequence[str | Path], *, model: Callable, classes: Sequence[str],
                  preprocessing: Preprocessing | Callable[[str], np.ndarray],
                  other_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                  batch_size: int = BATCH_SIZE, workers: int = WORKERS, device: str = "auto",
                  recursive: bool = True, timings: dict | None = None) -> pd.DataFrame:
    """Predict every image under ``paths``; one row per input (see ``COLUMNS``), in input order.

    ``classes``: the known classes (a saved list with ``Other`` last is accepted). ``preprocessing``: the
    model's input rule (`photos.Preprocessing`), or any ``path -> (3, H, W) float32 array`` that raises
    `photos.ImageReadError` on a bad file. ``model``: any callable mapping a (N, 3, H, W) float32 numpy batch
    to (N, len(classes)) logits; a torch module is put in eval mode on ``device``. ``timings``: a dict that
    receives seconds spent decoding (summed over threads), in the model and in all.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an int >= 1")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers={workers!r}: expected an int >= 0 (0 decodes in the calling thread)")
    known = as_known_classes(classes)
    t0 = time.perf_counter()
    rows = expand_inputs(paths, recursive=recursive)
    n = len(rows)
    table: dict[str, np.ndarray] = {
        "path": np.array([p for p, _ in rows], dtype=object),
        "label": np.full(n, "", dtype=object),
        "other_score": np.full(n, np.nan),
        **{f"top{k}": np.full(n, "", dtype=object) for k in range(1, TOP_K + 1)},
        **{f"top{k}_logit": np.full(n, np.nan) for k in range(1, TOP_K + 1)},
        "error": np.array([e for _, e in rows], dtype=object),
    }
    clock = {"decode_seconds": 0.0, "model_seconds": 0.0, "photos": 0}
    todo = [i for i, (_, e) in enumerate(rows) if not e]
    if todo:
        prepare = preprocessing.array if isinstance(preprocessing, Preprocessing) else preprocessing
        _predict_into(table, [rows[i][0] for i in todo], np.asarray(todo), model=array_model(model, device),
                      known=known, prepare=prepare, other_fn=other_fn, batch_size=batch_size, workers=workers,
                      clock=clock)
    if timings is not None:
        timings.update(clock, inputs=n, seconds=time.perf_counter() - t0)
    return pd.DataFrame({c: table[c] for c in COLUMNS}, columns=COLUMNS)


def array_model(model: Callable, device: str = "auto") -> Callable[[np.ndarray], np.ndarray]:
    """``model`` as a function of a numpy batch returning float32 numpy logits. A torch module (recognised
    without importing torch here) runs in eval mode under inference_mode on ``device``."""
    if hasattr(model, "parameters") and hasattr(model, "eval") and hasattr(model, "to"):
        import torch

        dev = pick_device(device)
        module = model.eval().to(dev)

        def call(x: np.ndarray):
            with torch.inference_mode():
                return module(torch.from_numpy(x).to(dev, non_blocking=True))
    else:
        call = model

    def logits_of(x: np.ndarray) -> np.ndarray:
        out = call(x)
        if isinstance(out, (tuple, list)):  # (features, logits) models: keep the logits
            out = out[-1]
        if hasattr(out, "detach"):
            out = out.detach().float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    return logits_of


def decoded_batches(files: Sequence[str], prepare: Callable[[str], np.ndarray], *, batch_size: int, workers: int,
                    clock: dict | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None, list[tuple[int, str]]]]:
    """``(indices, batch, failures)`` for consecutive chunks of ``files``, in order: the indices of the photos
    in ``batch`` (None when none of the chunk could be read) and ``(index, error)`` for the others."""
    clock = clock if clock is not None else {}
    clock.setdefault("decode_seconds", 0.0)

    def load(i: int):
        t = time.perf_counter()
        try:
            x, error = prepare(files[i]), ""
        except ImageReadError as e:
            x, error = None, str(e)
        except Exception as e:  # noqa: BLE001 - a custom prepare's failure: still one row, naming the file
            x, error = None, f"{files[i]}: cannot prepare image ({type(e).__name__}: {e})"
        return i, x, error, time.perf_counter() - t  # summed by the consuming thread: no shared counter

    def assemble(loaded):
        clock["decode_seconds"] += sum(seconds for *_, seconds in loaded)
        ok = [(i, x) for i, x, e, _ in loaded if not e]
        failures = [(i, e) for i, _, e, _ in loaded if e]
        idx = np.array([i for i, _ in ok], dtype=np.int64)
        return idx, (np.stack([x for _, x in ok]) if ok else None), failures

    chunks = [range(s, min(s + batch_size, len(files))) for s in range(0, len(files), batch_size)]
    if workers == 0:
        for chunk in chunks:
            yield assemble([load(i) for i in chunk])
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="receiptlib-decode") as pool:
        pending: deque = deque()
        upcoming = iter(chunks)
        for chunk in upcoming:
            pending.append([pool.submit(load, i) for i in chunk])
            if len(pending) >= AHEAD:
                break
        while pending:
            futures = pending.popleft()
            chunk = next(upcoming, None)
            if chunk is not None:
                pending.append([pool.submit(load, i) for i in chunk])
            yield assemble([f.result() for f in futures])


def _predict_into(table, files, at, *, model, known, prepare, other_fn, batch_size, workers, clock) -> None:
    done_idx, logit_batches = [], []
    batches = decoded_batches(files, prepare, batch_size=batch_size, workers=workers, clock=clock)
    for idx, x, failures in progress(batches, desc="predict", unit="batch", total=-(-len(files) // batch_size)):
        for i, error in failures:
            table["error"][at[i]] = error
        if x is None:
            continue
        t = time.perf_counter()
        logits = model(x)
        clock["model_seconds"] += time.perf_counter() - t
        clock["photos"] += len(idx)
        if logits.ndim != 2 or logits.shape[1] != len(known):
            raise ValueError(f"model returned logits of shape {tuple(logits.shape)}; expected (batch, {len(known)}) "
                             f"for the {len(known)} known classes: do model and class list come from the same run?")
        done_idx.append(idx)
        logit_batches.append(logits)
    if not logit_batches:
        return
    rows = at[np.concatenate(done_idx)]
    logits = np.concatenate(logit_batches).astype(np.float64)
    order = np.argsort(-logits, axis=1, kind="stable")
    if other_fn is None:
        is_other = np.zeros(len(logits), dtype=bool)
        score = -logits.max(axis=1)
    else:
        is_other, score = other_fn(logits)
        is_other = np.asarray(is_other, dtype=bool).reshape(-1)
        score = np.asarray(score, dtype=np.float64).reshape(-1)
        if len(is_other) != len(logits) or len(score) != len(logits):
            raise ValueError(f"other_fn returned {len(is_other)} decisions and {len(score)} scores for {len(logits)} images")
    names = np.asarray(known, dtype=object)
    table["label"][rows] = np.where(is_other, OTHER, names[order[:, 0]])
    table["other_score"][rows] = score
    for k in range(min(TOP_K, len(known))):
        table[f"top{k + 1}"][rows] = names[order[:, k]]
        table[f"top{k + 1}_logit"][rows] = np.take_along_axis(logits, order[:, k:k + 1], axis=1)[:, 0]


# ----------------------------------------------------------------------------------------------
# Reporting and writers
# ----------------------------------------------------------------------------------------------

def counts(df: pd.DataFrame) -> dict[str, int]:
    """inputs, predicted (rows with a label), other (of those, labelled Other), errors."""
    failed = df["error"].fillna("").astype(str) != ""
    return {"inputs": int(len(df)), "predicted": int((~failed).sum()), "other": int((df["label"] == OTHER).sum()),
            "errors": int(failed.sum())}


def summary(df: pd.DataFrame, *, max_errors: int = 3) -> str:
    """One line for stderr: '12 inputs, 10 predicted (4 Other), 2 errors: a.jpg: empty file; ...'."""
    c = counts(df)
    line = f"{c['inputs']} inputs, {c['predicted']} predicted ({c['other']} {OTHER}), {c['errors']} errors"
    if c["errors"]:
        errors = df.loc[df["error"].fillna("") != "", "error"].tolist()
        line += ": " + "; ".join(errors[:max_errors])
        if len(errors) > max_errors:
            line += f"; and {len(errors) - max_errors} more (see the error column)"
    return line


def exit_code(df: pd.DataFrame, *, strict: bool = False) -> int:
    """0 on success; 1 when nothing could be read (no inputs counts as nothing), or with strict=True when any input failed."""
    c = counts(df)
    if c["predicted"] == 0:
        return 1
    if strict and c["errors"]:
        return 1
    return 0


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """All columns, one row per input; ``-`` writes to stdout."""
    if str(path) == "-":
        df.to_csv(sys.stdout, index=False, columns=COLUMNS, float_format="%.6g")
    else:
        io.write_csv(path, df, columns=COLUMNS, float_format="%.6g")


_ID = re.compile(r"(\d+)$")


def mozgalo_id(path: str | Path) -> int | None:
    """The numeric id of a file name: the digits ending its stem ('12.jpg' -> 12, 'img_0012.jpg' -> 12), else None."""
    m = _ID.search(Path(path).stem)
    return int(m.group(1)) if m else None


def mozgalo_lines(df: pd.DataFrame, *, failed_label: str = OTHER) -> list[str]:
    """Labels ordered by the numeric id in the file name, as the competition's submissions.

    A row that failed (unreadable or missing file) gets ``failed_label`` (default Other: every line needs
    a label, and half of the competition's test set is Other). Raises ``ValueError`` naming the files
    without a numeric id or sharing one; warns when the ids have gaps (lines would shift).
    """
    ids = [mozgalo_id(p) for p in df["path"]]
    missing = [p for p, i in zip(df["path"], ids) if i is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"mozgalo format needs a numeric id in every file name (like 123.jpg); none in: {shown}. "
                         "Rename the files or use --format csv")
    by_id: dict[int, str] = {}
    for p, i in zip(df["path"], ids):
        if i in by_id:
            raise ValueError(f"mozgalo format: {by_id[i]} and {p} share the id {i}; predict one folder at a time")
        by_id[i] = p
    order = np.argsort(np.asarray(ids), kind="stable")
    sorted_ids = np.asarray(ids)[order]
    if len(sorted_ids) and sorted_ids[-1] - sorted_ids[0] + 1 != len(sorted_ids):
        gap = next(int(a) + 1 for a, b in zip(sorted_ids, sorted_ids[1:]) if b != a + 1)
        warnings.warn(f"mozgalo format: ids run {sorted_ids[0]}..{sorted_ids[-1]} with gaps (first missing: {gap}); "
                      "lines are in id order without placeholders", stacklevel=2)
    labels = df["label"].fillna("").astype(str).to_numpy()
    failed = df["error"].fillna("").astype(str).to_numpy() != ""
    labels = np.where(failed | (labels == ""), failed_label, labels)
    return [str(labels[k]) for k in order]


def write_mozgalo(df: pd.DataFrame, path: str | Path, *, failed_label: str = OTHER) -> None:
    """One label per line ordered by the numeric id in the file name (see ``mozgalo_lines``); ``-`` is stdout."""
    text = "".join(line + "\n" for line in mozgalo_lines(df, failed_label=failed_label))
    if str(path) == "-":
        sys.stdout.write(text)
    else:
        io.write_text(path, text)


WRITERS = {"csv": write_csv, "mozgalo": write_mozgalo}


def predict_to_file(paths: Sequence[str | Path], *, model: Callable, classes: Sequence[str],
                    preprocessing: Preprocessing | Callable[[str], np.ndarray], out: str | Path, format: str = "csv",
                    other_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                    batch_size: int = BATCH_SIZE, workers: int = WORKERS, device: str = "auto",
                    recursive: bool = True, strict: bool = False, stderr=None, timings: dict | None = None) -> int:
    """What ``receiptlib predict`` does once it has a model: predict, write ``out``, print the summary to
    stderr, and return the exit code (see ``exit_code``)."""
    if format not in WRITERS:
        raise ValueError(f"format={format!r}: expected one of {sorted(WRITERS)}")
    df = predict_paths(paths, model=model, classes=classes, preprocessing=preprocessing, other_fn=other_fn,
                       batch_size=batch_size, workers=workers, device=device, recursive=recursive, timings=timings)
    WRITERS[format](df, out)
    print(summary(df), file=stderr or sys.stderr)
    return exit_code(df, strict=strict)
