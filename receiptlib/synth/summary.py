"""What the synthetic world holds, in numbers: the share of photos each distortion touches at a difficulty,
and every photo property whose rate differs between known and Other photos (a confound a model could use)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..common import OTHER
from .photo import DISTORTIONS
from .writer import SynthConfig, make_photo, plan, world_of

# Photo properties read from the manifest besides the distortions list: name -> rule on a manifest table
_PROPERTIES = {
    "logo in frame": lambda m: m["logo_in_frame"].astype(bool),
    "second receipt (any)": lambda m: m["second_receipt"].astype(str) != "none",
    "three receipts in frame": lambda m: m["extra_receipts"].astype(int) >= 2,
    "shot from the top (long receipt)": lambda m: m["top_zoom"].astype(bool),
    "receipt < 0.8 of the aimed size": lambda m: m["scale"].astype(float) < 0.8,
    "|rotation| > 30 degrees": lambda m: m["rotation_deg"].astype(float).abs() > 30,
    "occluded > 10%": lambda m: m["occluded_frac"].astype(float) > 0.1,
}


def touched(manifest) -> "pd.DataFrame":  # noqa: F821
    """One boolean column per distortion (from the manifest's `distortions` list) and per photo property."""
    import pandas as pd

    applied = manifest["distortions"].fillna("").astype(str).str.split("+")
    cols = {name: applied.apply(lambda names, n=name: n in names) for name in DISTORTIONS}
    cols.update({name: rule(manifest) for name, rule in _PROPERTIES.items()})
    return pd.DataFrame(cols, index=manifest.index)


def distortion_shares(difficulties=(0.0, 0.3, 0.6, 1.0), *, n: int = 200, seed: int = 0,
                      size: tuple[int, int] = (96, 128), config: SynthConfig | None = None) -> "pd.DataFrame":  # noqa: F821
    """Share of photos each distortion (and property) touches at each difficulty: `n` val photos (known and
    Other) of `config`'s world generated in memory at a small `size` (shares do not depend on it)."""
    import pandas as pd

    if n < 1:
        raise ValueError(f"distortion_shares: n={n} must be at least 1")
    base = config or SynthConfig()
    out = {}
    for d in difficulties:
        cfg = replace(base, difficulty=float(d), width=size[0], height=size[1])
        world = world_of(cfg, seed)
        items = [it for it in plan(cfg, seed, world) if it.split == "val"][:n]
        rows = pd.DataFrame([make_photo(world, cfg, seed, it)[1] for it in items])
        out[f"difficulty {d:g}"] = touched(rows).mean()
    return pd.DataFrame(out)


def known_vs_other(manifest, *, splits=("val", "test"), min_gap: float = 0.03, alpha: float = 0.01) -> "pd.DataFrame":  # noqa: F821
    """Rate of every distortion and property among known and among Other photos of `splits`, the gap, a
    two-proportion z-test's p-value, and `differs`: p < alpha / (number of properties), Bonferroni's family-wise
    level over the table, and |gap| >= min_gap (a confound to name). Without the correction one of some twenty
    properties drawn at equal rates would be flagged now and then by chance alone."""
    import pandas as pd
    from math import erf, sqrt

    m = manifest[manifest["split"].isin(splits)]
    if m.empty:
        raise ValueError(f"known_vs_other: the manifest has no photos in splits {list(splits)}")
    other = (m["label"] == OTHER).to_numpy()
    flags = touched(m)
    rows = []
    level = alpha / len(flags.columns)
    for name in flags.columns:
        x = flags[name].to_numpy(bool)
        n1, n2 = int((~other).sum()), int(other.sum())
        p1, p2 = x[~other].mean() if n1 else np.nan, x[other].mean() if n2 else np.nan
        pool = x.mean()
        se = sqrt(pool * (1 - pool) * (1 / max(n1, 1) + 1 / max(n2, 1)))
        z = (p2 - p1) / se if se > 0 else 0.0
        p = 1 - erf(abs(z) / sqrt(2))  # two-sided
        rows.append({"property": name, "known": p1, "Other": p2, "gap": p2 - p1, "p_value": p,
                     "differs": bool(p < level and abs(p2 - p1) >= min_gap)})
    return pd.DataFrame(rows).set_index("property")
