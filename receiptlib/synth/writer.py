"""Presets, splits and the on-disk data set: `DIR/{train,val,test}/<Class>/<id>.jpg` + manifest.csv + synth.json.

Each image's RNG comes from (seed, split, id) only, so files are byte-identical whatever the number of
worker processes, and an interrupted generation resumes by redoing only what is missing.
"""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import shutil
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .. import presets as _presets
from ..common import OTHER, SPLITS, progress
from ..io import atomic_write, write_text
from .chains import World, make_world
from .photo import PARAM_NAMES, photograph
from .scene import photo_backgrounds
from .render import render_receipt

FORMAT_VERSION = 3  # bump whenever the generator's output bytes change for the same config and seed
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
MANIFEST_COLUMNS = ("path", "split", "label", "chain", "lookalike", "lookalike_of", "lookalike_kind", "store", "template",
                    "logo_in_frame", "second_chain") + PARAM_NAMES


@dataclass(frozen=True)
class SynthConfig:
    """Size and look of one synthetic data set (the competition's photos are not public)."""

    name: str = "custom"
    n_known: int = 25  # the paper's 25 chains
    n_unknown_val: int = 16  # unknown chains behind val's Other; disjoint from test's
    n_unknown_test: int = 24  # more chains than val's: test's Other is resampled by chain for its intervals
    n_lookalike: int = 5  # per split, unknown chains wearing a known chain's logo (paper Figs 8-9)
    train_per_class: int = 100
    val_per_class: int = 24
    test_per_class: int = 32
    val_other: int = 600  # Other never appears in train
    test_other: int = 800  # = 25 * test_per_class: test is half Other, like the competition's
    lookalike_frac: float = 0.3  # share of Other photos showing a lookalike chain
    # share of photos, known and Other alike (every split), with another known chain's receipt partly in frame,
    # its logo visible (Fig. 10); the photo keeps the label of the receipt it shows whole
    logo_in_frame_frac: float = 0.2
    width: int = 384  # portrait phone photos, downscaled: 224 px crops lose little
    height: int = 512
    difficulty: float = 1.0  # scales every photo distortion; 0 = flat receipts on a plain desk
    jpeg_quality: int = 90  # fixed so bytes are reproducible

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", "float") and v < 0:
                raise ValueError(f"SynthConfig.{f.name}={v} must be >= 0")
        if self.n_known < 1 or self.train_per_class < 1:
            raise ValueError("SynthConfig: n_known and train_per_class must be at least 1")
        for name in ("lookalike_frac", "logo_in_frame_frac"):
            if getattr(self, name) > 1:
                raise ValueError(f"SynthConfig.{name}={getattr(self, name)} is a share of photos: at most 1")
        if min(self.width, self.height) < 32:
            raise ValueError(f"SynthConfig: photo size {self.width}x{self.height} is too small (>= 32 px)")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_known * self.train_per_class,
                "val": self.n_known * self.val_per_class + self.val_other,
                "test": self.n_known * self.test_per_class + self.test_other}

    @property
    def total(self) -> int:
        return sum(self.split_sizes().values())


# The presets' worlds (receiptlib.presets holds every preset's settings; these are their synth parts)
PRESETS: dict[str, SynthConfig] = {name: SynthConfig(name=name, **p.synth) for name, p in _presets.PRESETS.items()}


def _config(config_or_preset: SynthConfig | str) -> SynthConfig:
    if isinstance(config_or_preset, SynthConfig):
        return config_or_preset
    if config_or_preset not in PRESETS:
        raise ValueError(f"unknown synth preset {config_or_preset!r}; choose one of {sorted(PRESETS)} or pass a SynthConfig")
    return PRESETS[config_or_preset]


def world_of(config: SynthConfig, seed: int) -> World:
    return make_world(seed, n_known=config.n_known, n_unknown_val=config.n_unknown_val,
                      n_unknown_test=config.n_unknown_test, n_lookalike=config.n_lookalike)


@dataclass(frozen=True)
class Item:
    split: str
    id: int
    label: str
    chain: str
    kind: str  # known | plain | lookalike
    logo_in_frame: bool = False  # another known chain's receipt, logo visible, partly in frame


def id_width(config: SynthConfig) -> int:
    return max(5, len(str(max(config.split_sizes().values()))))


def plan(config: SynthConfig, seed: int, world: World | None = None) -> list[Item]:
    """Every image of the data set. Ids are a seeded shuffle so a file's number says nothing of its class.

    Logo-in-frame photos are drawn at the same share among known and among Other photos of every split, so
    clutter in the frame says nothing of the label (the known photos keep their chain's label)."""
    world = world or world_of(config, seed)
    items = []
    for split in SPLITS:
        per = {"train": config.train_per_class, "val": config.val_per_class, "test": config.test_per_class}[split]
        rows = [(c.name, c.name, "known") for c in world.known for _ in range(per)]
        n_other = {"train": 0, "val": config.val_other, "test": config.test_other}[split]
        looks, plain = world.lookalikes(split), world.plain_unknown(split)
        n_look = int(round(n_other * config.lookalike_frac)) if looks else 0
        for k in range(n_other):
            if k < n_look:
                rows.append((OTHER, looks[k % len(looks)].name, "lookalike"))
            else:
                rows.append((OTHER, plain[(k - n_look) % len(plain)].name, "plain"))
        lif = np.zeros(len(rows), bool)
        pick = np.random.default_rng([seed, 200 + SPLIT_CODE[split]])
        for group in (np.arange(len(rows) - n_other), np.arange(len(rows) - n_other, len(rows))):
            lif[pick.choice(group, int(round(len(group) * config.logo_in_frame_frac)), replace=False)] = True
        order = np.random.default_rng([seed, 100 + SPLIT_CODE[split]]).permutation(len(rows))
        items += [Item(split, i, *rows[j], logo_in_frame=bool(lif[j])) for i, j in enumerate(order)]
    return items


def item_path(item: Item, width: int) -> str:
    return f"{item.split}/{item.label}/{item.id:0{width}d}.jpg"


# ---------------------------------------------------------------- one image (runs in worker processes)
_STATE: dict = {}


def _init(config_dict: dict, seed: int, out_dir: str):
    config = SynthConfig(**config_dict)
    _STATE.update(config=config, seed=seed, out=Path(out_dir), world=world_of(config, seed), width=id_width(config),
                  rows=None)


def make_photo(world: World, config: SynthConfig, seed: int, item: Item):
    """The photo of one planned item and its manifest row (without path); a pure function of its inputs."""
    code = SPLIT_CODE[item.split]
    rng = np.random.default_rng([seed, code, item.id])
    rng2 = np.random.default_rng([seed, code, item.id, 1])  # second receipt: drawn only if the photo wants one
    chain = world.chain(item.chain)
    base = max(96, int(config.width * 0.6))  # about the width it will have in the photo: no huge render to shrink
    receipt = render_receipt(chain, rng, width=base)
    # A second receipt in frame: a known chain's for logo-in-frame photos; otherwise any chain of the split, for
    # known and Other photos alike (train has only known chains), so the clutter's chain says nothing of the label
    pool = [c for c in world.known if c.name != item.chain]
    if not item.logo_in_frame:
        pool += [c for c in world.unknown(item.split) if c.name != item.chain]
    pool = pool or [chain]
    second_chain = pool[int(rng2.integers(len(pool)))]
    used = []

    def second():
        used.append(second_chain.name)
        return render_receipt(second_chain, rng2, width=base)

    img, params = photograph(receipt, rng, size=(config.width, config.height), difficulty=config.difficulty,
                             second=second, logo_in_frame=item.logo_in_frame)
    row = {"split": item.split, "label": item.label, "chain": item.chain, "lookalike": item.kind == "lookalike",
           "lookalike_of": chain.lookalike_of or "", "lookalike_kind": chain.lookalike_kind or "",
           "store": receipt.info["store"], "template": receipt.info["template"], "logo_in_frame": item.logo_in_frame,
           "second_chain": used[0] if used else "", **params}
    return img, row


def _work(item: Item) -> dict:
    st = _STATE
    img, row = make_photo(st["world"], st["config"], st["seed"], item)
    rel = item_path(item, st["width"])
    dest = st["out"] / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    # atomic: a file under its final name is always complete
    atomic_write(dest, lambda tmp: img.save(tmp, "JPEG", quality=st["config"].jpeg_quality, subsampling=2,
                                            optimize=False, progressive=False))
    row = {"path": rel, **row}
    if st["rows"] is None:
        parts = st["out"] / ".parts"
        parts.mkdir(exist_ok=True)
        st["rows"] = open(parts / f"rows-{os.getpid()}-{id(st)}.jsonl", "a")
    st["rows"].write(json.dumps(row) + "\n")  # after the image, so a row always means a finished image
    st["rows"].flush()
    return row


def _close_rows():
    if _STATE.get("rows") is not None:
        _STATE["rows"].close()
        _STATE["rows"] = None


# ---------------------------------------------------------------- the data set folder
def _meta(config: SynthConfig, seed: int) -> dict:
    return {"format_version": FORMAT_VERSION, "seed": seed, "config": asdict(config)}


def _read_meta(out: Path) -> dict | None:
    p = out / "synth.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e}); delete the folder {out} or choose another --out") from None


def _same_version(meta: dict, config: SynthConfig, seed: int) -> bool:
    """Whether a data set's synth.json records this format, seed and configuration."""
    want = _meta(config, seed)
    return all(meta.get(k) == want[k] for k in ("format_version", "seed", "config"))


def _check_same(out: Path, config: SynthConfig, seed: int):
    meta = _read_meta(out)
    want = _meta(config, seed)
    if meta is None:
        if out.exists() and any(p.name != ".parts" for p in out.iterdir()):
            raise ValueError(f"{out} is not empty and has no synth.json: it holds something other than a synthetic "
                             "data set; choose an empty or new folder")
        return
    diffs = [f"{k}: {meta.get(k)!r} on disk vs {want[k]!r} asked" for k in ("format_version", "seed") if meta.get(k) != want[k]]
    have = meta.get("config", {})
    diffs += [f"config.{k}: {have.get(k)!r} on disk vs {v!r} asked" for k, v in want["config"].items() if have.get(k) != v]
    if diffs:
        raise ValueError(f"{out} holds a different synthetic data set ({'; '.join(diffs)}); refusing to overwrite it. "
                         "Delete the folder or choose another output folder.")


def _write_meta(out: Path, meta: dict) -> None:
    write_text(out / "synth.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _known_rows(out: Path) -> dict[str, dict]:
    """Rows of finished images: from a previous manifest and from interrupted runs' .parts."""
    rows: dict[str, dict] = {}
    man = out / "manifest.csv"
    if man.exists():
        with open(man, newline="") as f:
            for r in csv.DictReader(f):
                rows[r["path"]] = r
    parts = out / ".parts"
    if parts.exists():
        for p in sorted(parts.glob("*.jsonl")):
            for line in p.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interruption
                    continue
                rows[r["path"]] = r
    return rows


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return {"True": "true", "False": "false"}.get(v, v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def is_complete(out: str | Path, config_or_preset: SynthConfig | str | None = None, seed: int | None = None) -> bool:
    """True when `out` holds a finished data set (of that config and seed, if given) with every file present."""
    out = Path(out)
    meta = _read_meta(out)
    if meta is None or not meta.get("complete") or not (out / "manifest.csv").exists():
        return False
    if config_or_preset is not None and seed is not None and not _same_version(meta, _config(config_or_preset), seed):
        return False
    with open(out / "manifest.csv", newline="") as f:
        return all((out / r["path"]).exists() for r in csv.DictReader(f))


def generate(out_dir: str | Path, config_or_preset: SynthConfig | str = "quick", *, seed: int = 0, workers: int = 1) -> Path:
    """Write the data set to `out_dir`, resuming if it was interrupted; refuse a folder holding another one.

    workers: processes (1 = in this process). Output bytes do not depend on it.
    """
    config = _config(config_or_preset)
    if workers < 1:
        raise ValueError(f"generate: workers={workers} must be at least 1")
    out = Path(out_dir)
    _check_same(out, config, seed)
    out.mkdir(parents=True, exist_ok=True)
    meta = _read_meta(out) or {}
    if not meta:
        _write_meta(out, {**_meta(config, seed), "complete": False})
    world = world_of(config, seed)
    items = plan(config, seed, world)
    width = id_width(config)
    done = _known_rows(out)
    todo = [it for it in items if not (item_path(it, width) in done and (out / item_path(it, width)).exists())]
    if todo and meta.get("complete"):
        _write_meta(out, {**_meta(config, seed), "complete": False})
    cfg = asdict(config)
    new_rows = []
    if todo:
        bar = progress(range(len(todo)), total=len(todo), desc=f"synth {config.name}", unit="photo")
        it = iter(bar)
        if workers == 1 or len(todo) < 8:
            _init(cfg, seed, str(out))
            try:
                for item in todo:
                    new_rows.append(_work(item))
                    next(it, None)
            finally:
                _close_rows()
        else:
            # fork on Linux: works from Jupyter and from scripts without a __main__ guard (spawn would re-run
            # them); workers only use numpy/PIL, so forking a parent that loaded torch is harmless.
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            if ctx.get_start_method() == "fork":
                photo_backgrounds()  # load once here; forked workers inherit it instead of each loading it
            with ctx.Pool(min(workers, len(todo)), initializer=_init, initargs=(cfg, seed, str(out))) as pool:
                for row in pool.imap_unordered(_work, todo, chunksize=4):
                    new_rows.append(row)
                    next(it, None)
        for _ in it:  # close the bar
            pass
    for r in new_rows:
        done[r["path"]] = r
    def write_manifest(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(MANIFEST_COLUMNS)
            for item in items:
                r = done[item_path(item, width)]
                w.writerow([_fmt(r[c]) for c in MANIFEST_COLUMNS])

    atomic_write(out / "manifest.csv", write_manifest)
    counts = {s: n for s, n in config.split_sizes().items()}
    _write_meta(out, {**_meta(config, seed), "complete": True, "counts": counts, "known_classes": world.known_names,
                      "unknown_chains": {s: [c.name for c in world.unknown(s)] for s in ("val", "test")}})
    shutil.rmtree(out / ".parts", ignore_errors=True)
    for tmp in out.glob("*/*/.*.tmp"):  # leftovers of an interrupted write
        tmp.unlink(missing_ok=True)
    return out


def dataset_dir(preset: str = "quick", seed: int = 0, root: str | Path = "data") -> Path:
    """Where `ensure_dataset` keeps a preset's data: `root/synth-<preset>-seed<seed>`."""
    return Path(root) / f"synth-{preset}-seed{seed}"


def ensure_dataset(preset: str | SynthConfig = "quick", seed: int = 0, root: str | Path = "data", workers: int | None = None) -> Path:
    """The folder of a preset's data set, generated (or finished) first if it is not complete.

    A folder that holds a data set of an older version of the preset (another format or configuration, as
    recorded in its synth.json) is regenerated, with a notice: every such folder is a function of the code,
    the preset and the seed, so nothing is lost. `generate` itself refuses to overwrite anything."""
    config = _config(preset)
    out = dataset_dir(config.name, seed, root)
    meta = _read_meta(out)
    if meta is not None and not _same_version(meta, config, seed):
        print(f"[synth] {out} holds an older version of the {config.name!r} preset (format "
              f"{meta.get('format_version')}); regenerating it", flush=True)
        shutil.rmtree(out)
    if not is_complete(out, config, seed):
        generate(out, config, seed=seed, workers=workers or os.cpu_count() or 1)
    return out


def hard_other_examples(manifest, *, n: int = 4, seed: int = 0):
    """Up to n lookalike and n logo-in-frame Other photos, each paired with a train photo of the known chain
    it resembles (the one whose logo it copies, or whose receipt is partly in frame): paper Figs 8-10.
    Columns: path, chain, kind, known_chain, known_path."""
    import pandas as pd

    train = manifest[manifest.split == "train"]
    first_train = train.groupby("label").path.first()
    rows = []
    for kind, column in (("lookalike", "lookalike_of"), ("logo in frame", "second_chain")):
        flag = "lookalike" if kind == "lookalike" else "logo_in_frame"
        if column not in manifest:
            continue
        cases = manifest[(manifest.label == OTHER) & manifest[flag] & manifest[column].isin(first_train.index)]
        cases = cases.drop_duplicates(column)  # a different known chain in each example
        for row in cases.sample(min(n, len(cases)), random_state=seed).itertuples():
            known = getattr(row, column)
            rows.append({"path": row.path, "chain": row.chain, "kind": kind, "known_chain": known,
                         "known_path": first_train[known]})
    return pd.DataFrame(rows, columns=["path", "chain", "kind", "known_chain", "known_path"])
