"""A `bench` result as tables: a DataFrame of its rows, section VIII's table beside this machine, plain text."""
from __future__ import annotations

import pandas as pd

from ..timing import PAPER


def to_frame(result: dict | list):
    """The rows of a `bench` result as a pandas DataFrame."""
    return pd.DataFrame(result["results"] if isinstance(result, dict) else result)


def paper_table(result: dict):
    """Section VIII's table beside this machine: time for 10,000 images per setting (end to end when
    measured, scaled from the ``images_timed`` per pass), as a DataFrame."""
    rows = [{"hardware": p["hardware"], "setting": "paper", "images_per_s": p["images_per_s"],
             "time_for_10000": _hms(p["seconds_per_10000"]), "images_timed": 10_000} for p in PAPER]
    name = result["meta"]["device_name"]
    for r in result["results"]:
        if r.get("error") or r["mode"] != "end_to_end":
            continue
        rows.append({"hardware": f"{name}, {r['threads']} threads", "setting": r["backend"],
                     "images_per_s": r["images_per_s"], "time_for_10000": _hms(r["seconds_per_10000"]),
                     "images_timed": r["images"]})  # per pass; the median of e2e_repeats passes
    return pd.DataFrame(rows)


def table(result: dict | list) -> str:
    """A plain-text table of a `bench` result (or its rows), with the machine and the paper's figures."""
    rows = result["results"] if isinstance(result, dict) else result
    lines = []
    if isinstance(result, dict):
        m, c = result["meta"], result["ceilings"]
        lines += [f"device: {m['device_name']} ({m['device']}, {m.get('cpu_capability')}), {m['threads']} threads "
                  f"of {m['cores']} cores; torch {m['torch']}, onnxruntime {m.get('onnxruntime')}",
                  f"model: {m['model']}, {m['gflop_per_image']} GFLOP per {m['config']['image_size']} px image "
                  "(multiply-add = 2 FLOPs)",
                  "ceilings (large matmul, GFLOP/s): " + ", ".join(f"{k} {v}" for k, v in c.items()),
                  f"load average at start {m['load_average'][0]:.2f}, at end "
                  f"{m.get('load_average_end', [float('nan')])[0]:.2f}", ""]
    head = f"{'backend':<20} {'mode':<10} {'batch':>5} {'img/s':>7} {'ms/img':>7} {'GFLOP/s':>8} {'ceiling':>8} {'of ceil':>7} {'peak MB':>8} {'+MB':>6} {'10k imgs':>9}"
    lines += [head, "-" * len(head)]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['backend']:<20} {r['mode']:<10} failed: {r['error'][:80]}")
            continue
        frac = f"{100 * r['fraction_of_ceiling']:.0f}%" if r.get("fraction_of_ceiling") else "-"
        ceil = f"{r['ceiling_gflops']:.0f}" if r.get("ceiling_gflops") else "-"
        lines.append(f"{r['backend']:<20} {r['mode']:<10} {r['batch_size']:>5} {r['images_per_s']:>7.1f} "
                     f"{r['ms_per_image']:>7.2f} {r['achieved_gflops']:>8.1f} {ceil:>8} {frac:>7} "
                     f"{r.get('peak_rss_mb', float('nan')):>8.0f} {r.get('peak_rss_delta_mb', float('nan')):>6.0f} "
                     f"{_hms(r['seconds_per_10000']):>9}")
    lines.append("")
    lines.append("peak MB: the process's resident-memory high-water mark (libraries included, loader workers "
                 "excluded); +MB: what the setting adds over the loaded libraries")
    lines.append("paper (section VIII, 10,000 val images): " + "; ".join(
        f"{p['hardware']} {p['images_per_s']} img/s ({_hms(p['seconds_per_10000'])})" for p in PAPER))
    return "\n".join(lines)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
