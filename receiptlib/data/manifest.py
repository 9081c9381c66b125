"""A data set's manifest (one row per photo with its parameters; built from the folders for real photos),
and the join of the manifest with a list of photos (for error analysis by distortion)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..common import OTHER, SPLITS, wilson_interval
from .images import is_image_file


def read_manifest(data_dir: str | Path):
    """The data set's manifest as a DataFrame. A folder of real photos has none: then one is built from the
    folder layout (path, split, label, chain = label, no lookalike or logo-in-frame flags)."""
    import pandas as pd

    data_dir = Path(data_dir)
    path = data_dir / "manifest.csv"
    if path.is_file():
        return pd.read_csv(path, keep_default_na=False, na_values=[""],
                           dtype={"lookalike_of": str, "second_chain": str, "lookalike_kind": str, "header_quad": str,
                                  "body_quad": str, "distortions": str},
                           converters={c: lambda v: v == "true" for c in ("lookalike", "logo_in_frame")})
    rows = [{"path": f.relative_to(data_dir).as_posix(), "split": split, "label": f.parent.name, "chain": f.parent.name,
             "lookalike": False, "logo_in_frame": False}
            for split in SPLITS for f in sorted((data_dir / split).glob("*/*")) if is_image_file(f)]
    if not rows:
        raise FileNotFoundError(f"{data_dir}: no manifest.csv and no images under {'/, '.join(SPLITS)}/<Class>/")
    return pd.DataFrame(rows)


def _manifest_key(path: str | Path, root: Path, real_root: Path) -> str:
    """A manifest ``path`` (relative to the data folder) for an image path that is absolute, relative to the
    working directory, or already relative to the data folder."""
    q = Path(path)
    for base, full in ((root, Path(os.path.abspath(q))), (real_root, q.resolve())):
        if full.is_relative_to(base):
            return full.relative_to(base).as_posix()
    return q.as_posix()


def photo_table(data_dir: str | Path, paths: Sequence[str | Path], *, missing: str = "raise"):
    """The manifest rows (``read_manifest``) of the images at ``paths``, in that order (index 0..n-1),
    joined on the manifest's ``path`` column; ``path`` here is relative to ``data_dir`` whatever the form
    of the given paths (absolute, relative to the working directory or to ``data_dir``).

    ``missing="raise"``: an image the manifest does not list raises ValueError; ``"keep"``: it gets a row
    with its path, NaN in the other columns and False in the flag columns (lookalike, logo_in_frame).
    """
    import pandas as pd

    if missing not in ("raise", "keep"):
        raise ValueError(f"missing={missing!r}: expected 'raise' or 'keep'")
    manifest = read_manifest(data_dir)
    if "path" not in manifest.columns:
        raise ValueError(f"{Path(data_dir) / 'manifest.csv'}: no 'path' column (image paths relative to {data_dir})")
    root = Path(os.path.abspath(data_dir))
    keys = [_manifest_key(p, root, Path(data_dir).resolve()) for p in paths]
    table = pd.DataFrame({"path": keys}).merge(manifest, on="path", how="left", validate="many_to_one",
                                               indicator="_listed")
    absent = (table.pop("_listed") == "left_only").to_numpy()
    if missing == "raise" and absent.any():
        raise ValueError(f"{Path(data_dir) / 'manifest.csv'}: {int(absent.sum())} images are not listed, e.g. "
                         f"{paths[int(absent.argmax())]}; regenerate the manifest "
                         "or pass a data folder without manifest.csv")
    for flag in ("lookalike", "logo_in_frame"):
        if flag in table.columns:
            table[flag] = table[flag].eq(True)  # unlisted rows (NaN) count as not flagged
    return table


def distortion_bins(table) -> dict:
    """``photo_table``'s rows binned per distortion, to read error rates per bin (notebook 07): {title:
    Series aligned with ``table``}. |rotation| in degrees, blur in px, occluded fraction (a column the
    manifest lacks, as for real photos, counts as 0) and the kind of photo (lookalike Other, split off when it
    copies the template family too; logo-in-frame Other; plain Other; logo-in-frame known; known)."""
    import pandas as pd

    def column(name: str):
        return table[name] if name in table.columns else pd.Series(0, index=table.index)

    def flag(name: str):
        return column(name).eq(True)

    label = table["label"] if "label" in table.columns else pd.Series("", index=table.index)
    other = (label == OTHER).to_numpy()
    lookalike = np.where(column("lookalike_kind").eq("logo_and_template"), "lookalike Other (logo and template)",
                         "lookalike Other")
    kind = np.where(flag("lookalike"), lookalike,
                    np.where(flag("logo_in_frame"), np.where(other, "logo-in-frame Other", "logo-in-frame known"),
                             np.where(other, "plain Other", "known")))
    return {"rotation (|degrees|)": pd.cut(column("rotation_deg").abs(), [0, 10, 20, 30, 180], include_lowest=True),
            "blur (px)": pd.cut(column("blur_px"), [-0.01, 0.5, 1.5, 3, 100]),
            "occluded fraction": pd.cut(column("occluded_frac"), [-0.01, 0.0, 0.1, 0.25, 1]),
            "kind of photo": pd.Series(kind, index=table.index)}


def slice_rates(flags, key, *, min_photos: int = 50):
    """The rate of ``flags`` (a boolean per photo, e.g. "wrong") in each bin of ``key`` (from ``distortion_bins``),
    with its Wilson 95% interval: a DataFrame of bin, n, rate, low, high. Adjacent bins of an ordered key with
    fewer than ``min_photos`` photos are merged (into the next one, the last into the one before), so no rate
    rests on a handful of photos; unordered bins (kinds of photo) are kept, small or not, with their n."""
    import pandas as pd

    flags = pd.Series(np.asarray(flags, bool), index=key.index)
    ordered = isinstance(key.dtype, pd.CategoricalDtype) and key.cat.ordered
    groups = [(str(b), flags[key == b]) for b in (key.cat.categories if ordered else pd.unique(key.dropna()))]
    groups = [(name, g) for name, g in groups if len(g)]
    if ordered:
        merged = []
        for name, g in groups:
            if merged and len(merged[-1][1]) < min_photos:
                first = merged[-1][0].split(" … ")[0]
                merged[-1] = (f"{first} … {name}", pd.concat([merged[-1][1], g]))
            else:
                merged.append((name, g))
        if len(merged) > 1 and len(merged[-1][1]) < min_photos:
            (a, ga), (b, gb) = merged[-2], merged[-1]
            merged[-2:] = [(f"{a.split(' … ')[0]} … {b.split(' … ')[-1]}", pd.concat([ga, gb]))]
        groups = merged
    rows = []
    for name, g in groups:
        low, high = wilson_interval(int(g.sum()), len(g))
        rows.append({"bin": name, "n": len(g), "rate": float(g.mean()), "low": low, "high": high})
    return pd.DataFrame(rows, columns=["bin", "n", "rate", "low", "high"])
