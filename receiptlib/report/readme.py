"""The results front page: README's marked section, written from the report preset's results/*.json only."""
from __future__ import annotations

from pathlib import Path

from ..stn import ARM_NAMES as STN_ARM_NAMES
from ..io import read_json, write_text

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
REPORT_FILE = "report.json"  # the runner's own timings (results/NN_*.json are the notebooks')
STN_SLICES = {"all": "all test photos", "hard": "hard slice"}


def _interval(bounds) -> str:
    """' (95% interval a–b)' for a [low, high] pair, '' when a result has none (older results)."""
    return f" (95% interval {_num(bounds[0])}–{_num(bounds[1])})" if bounds else ""


def _weights(source: str) -> str:
    """A weights source as the README shows it: its kind and the file's name, not the folder it sat in."""
    kind, _, path = str(source).partition(":")
    return f"{kind} ({Path(path).name})" if kind in ("imagenet", "path") and path else str(source)


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def summary(results_dir: str | Path = "results", *, link_prefix: str = "") -> str:
    """Markdown summary of the report from the JSON the notebooks saved in `results_dir` (its top level only:
    other presets' results lie in subfolders). Every number in it is one of theirs, rounded for display;
    sections whose notebook has not run are left out."""
    results_dir = Path(results_dir)
    found = {}
    for path in sorted(results_dir.glob("[0-9][0-9]_*.json")):
        r = read_json(path)
        if isinstance(r, dict) and r.get("meta", {}).get("notebook") == path.stem:  # a notebook's own results file
            found[path.stem[:2]] = r
    if not found:
        return "_No results yet: run `make report`._"
    meta = next(iter(found.values()))["meta"]
    nb = lambda r: f"[{r['meta']['notebook']}]({link_prefix}notebooks/{r['meta']['notebook']}.ipynb)"  # noqa: E731
    fig = lambda name: f"[figure]({link_prefix}figures/{name}.png)"  # noqa: E731
    lines = [f"_Written by `receiptlib report` from `results/*.json` (preset `{meta['preset']}`, seed {meta['seed']}, "
             f"{meta['device']}, {meta['date']}); regenerated on every run, not edited by hand._", ""]
    timing = results_dir / REPORT_FILE
    t = read_json(timing) if timing.is_file() else None
    if t and (t["meta"]["preset"], t["meta"]["seed"]) == (meta["preset"], meta["seed"]):  # the same report's
        steps = ([f"data {_num(t['data_seconds'], 0)} s"] if t.get("data_seconds") is not None else []) + \
            [f"{n['notebook'][:2]} {_num(n['seconds'], 0)} s" for n in t["notebooks"]]
        precision = f", {t['meta']['precision']}" if t["meta"].get("precision") else ""
        lines += [f"- **This run** took {t['total_minutes']} minutes on {t['meta']['machine']}{precision} "
                  f"({', '.join(steps)})."]
    if "03" in found:
        r = found["03"]
        if "test_accuracy" in r:  # val chose the epoch; the figure quoted is test's
            lines += [f"- **Closed-set accuracy** (test, {r['test_known_photos']} photos of known chains): "
                      f"{_num(r['test_accuracy'])}{_interval(r.get('test_accuracy_interval'))} (val "
                      f"{_num(r['val_accuracy'])}), `{r['arch']}` after {r['epochs']} "
                      f"epochs in {_num(r['train_seconds'], 0)} s, weights `{_weights(r['weights_source'])}`. {nb(r)}, "
                      f"{fig('03_learning_curves')}"]
        else:
            lines += [f"- **Closed-set accuracy** (val, known chains): {_num(r['val_accuracy'])} after {r['epochs']} "
                      f"epochs in {_num(r['train_seconds'], 0)} s, weights `{_weights(r['weights_source'])}`. {nb(r)}, "
                      f"{fig('03_learning_curves')}"]
        for name, row in (r.get("transfer") or {}).items():
            lines.append(f"  - {name}: test {_num(row['test_accuracy'])}, val {_num(row['val_accuracy_epoch_1'])} after "
                         f"epoch 1 and {_num(row['val_accuracy'])} at the end, {_num(row['wall_seconds'], 0)} s "
                         f"(`{row['arch']}`, {row['image_size']} px)")
    if "04" in found:
        r = found["04"]
        span = lambda v: f" ({_num(v['f1_low'])}–{_num(v['f1_high'])})" if v.get("f1_low") is not None else ""  # noqa: E731
        rows = "; ".join(f"{name} {_num(v['macro_f1'])}{span(v)}" for name, v in r["test"].items())
        lines += [f"- **Other by thresholds** (fitted on val, macro-F1 on test"
                  + ("; 95% intervals: paired bootstrap, Other by chain" if any(span(v) for v in r["test"].values()) else "")
                  + f"): {rows}. {nb(r)}, {fig('04_f1_vs_k')}"]
        protocols = r.get("protocols")
        if protocols:  # the same detectors fitted with Other photos of val's unknown chains or of test's own
            pairs = "; ".join(f"{name} {_num(v['disjoint']['macro_f1'])} → {_num(v['same_chains']['macro_f1'])} "
                              f"(difference {v['difference']:+.3f}, 95% interval {v['diff_low']:+.3f} to {v['diff_high']:+.3f})"
                              for name, v in protocols["rows"].items())
            lines += [f"  - Where the Other photos that fit the thresholds come from, macro-F1 on test's known photos and "
                      f"a held-out half of its Other photos: disjoint chains (val's, the honest protocol) → same chains "
                      f"(the other half of test's, the paper's setting): {pairs}."]
    if "07" in found:
        r = found["07"]
        intervals = r.get("intervals") or {}
        lines += ["", f"Every Other detector, fitted on val and reported once on test ({nb(r)}, {fig('07_roc')}"
                  + ("; 95% intervals: paired bootstrap over test, Other photos resampled by chain" if intervals else "")
                  + "):", "",
                  "| detector | macro-F1 | 95% interval | Other F1 | closed-set acc. | AUROC | FPR@95 |",
                  "|---|---|---|---|---|---|---|"]
        for name, v in r["test"].items():
            iv = intervals.get(name)
            span = f"{_num(iv['low'])}–{_num(iv['high'])}" if iv else "n/a"
            lines.append(f"| `{name}` | {_num(v['macro_f1'])} | {span} | {_num(v['other_f1'])} "
                         f"| {_num(v['closed_set_accuracy'])} | {_num(v['auroc'])} | {_num(v['fpr_at_95_tpr'])} |")
        if r.get("best"):
            tied = ", ".join(f"`{n}`" for n in r.get("tied_with_best") or []) or "none"
            lines.append(f"\nBest on test: `{r['best']}`; within noise of it (the paired interval of the difference "
                         f"includes 0): {tied}.")
        cues = r.get("cue_ablation")
        if cues:  # what the classifier reads (synthetic data only: the generator records where header and body lie)
            shown = "; ".join(f"{'nothing' if k == 'none' else k} masked {_num(v['accuracy'])} ({_num(v['low'])}–"
                              f"{_num(v['high'])})" for k, v in cues.items())
            lines.append(f"\nWhat the classifier reads (closed-set accuracy on test's {cues['none']['n']} known photos, "
                         f"Wilson 95%): {shown}. {fig('07_cue_ablation')}")
    lines += other_preset_lines(results_dir / "hard", "hard", "every photo distortion at full strength, difficulty 1.0",
                                shown=f"{link_prefix}results/hard")
    if "05" in found:
        lines += ["", *stn_section(found["05"], nb(found["05"]), fig)]
    if "06" in found:
        r = found["06"]
        lines += ["", f"Time for 10,000 photos, the paper's machines beside this one ({nb(r)}, {fig('06_images_per_second')}; "
                  f"fastest setting that agrees with fp32 on val: `{r['fast_choice']}`):", "",
                  "| hardware | setting | images/s | time for 10,000 |", "|---|---|---|---|"]
        for row in r["paper_table"]:
            lines.append(f"| {row['hardware']} | {row['setting']} | {_num(row['images_per_s'], 1)} | {row['time_for_10000']} |")
    return "\n".join(lines)


def stn_section(r: dict, notebook: str, fig) -> list[str]:
    """Section VII from results/05_stn.json: the oracle ceiling, then per slice and arm the mean ± std over seeds
    and the paired 95% interval of the difference to arm A, and the transformer's final zoom and rotation."""
    def pm(row, key):
        std = row[f"{key}_std"]
        return _num(row[f"{key}_mean"]) + (f" ± {_num(std)}" if std is not None else "")

    def diff(row, key):
        if row["arm"] == "finetune":
            return "—"
        return f"{row[f'{key}_diff']:+.3f} ({row[f'{key}_diff_low']:+.3f}, {row[f'{key}_diff_high']:+.3f})"

    def motion(row):
        zoom = row.get("hard_mean_zoom" if row["slice"] == "hard" else "mean_zoom")
        rot = row.get("hard_mean_abs_rotation_deg" if row["slice"] == "hard" else "mean_abs_rotation_deg")
        return "—" if zoom is None else f"{zoom:.3f}, {rot:.1f}°"

    lines = []
    o = r.get("oracle")
    if o:
        lines += [f"Spatial transformer, section VII ({notebook}). Oracle ceiling (the stage-1 classifier on test photos "
                  f"set upright and sized as an aimed shot by the manifest): closed-set accuracy {_num(o['identity']['accuracy'])} "
                  f"→ {_num(o['oracle']['accuracy'])}; on the hard slice's {o['n_hard_known']} known photos "
                  f"{_num(o['identity']['hard_accuracy'])} → {_num(o['oracle']['hard_accuracy'])}.", ""]
    hard = f"; hard slice: {r['hard_slice_size']} of {r['test_size']} test photos" if r.get("hard_slice_size") else ""
    lines += [f"Every arm from the same stage-1 classifier with equal steps; mean ± std over seeds, Δ against arm A with "
              f"its paired 95% interval{hard} ({fig('05_transform')}, {fig('05_stn_outputs_staged')}):", "",
              "| slice | arm | seeds | closed-set acc. | Δ vs A | macro-F1 with Other | Δ vs A | zoom, abs. rotation |",
              "|---|---|---|---|---|---|---|---|"]
    for row in r["summary"]:
        lines.append(f"| {STN_SLICES.get(row['slice'], row['slice'])} | {STN_ARM_NAMES.get(row['arm'], row['arm'])} | "
                     f"{row['seeds']} | {pm(row, 'accuracy')} | {diff(row, 'accuracy')} | {pm(row, 'macro_f1')} | "
                     f"{diff(row, 'macro_f1')} | {motion(row)} |")
    return lines


def other_preset_lines(results_dir: Path, preset: str, what: str, *, shown: str) -> list[str]:
    """The summary of another preset's report (`make report PRESET=...`), when its results are there: closed-set
    accuracy and the detector table, so a reader sees how the method holds up beside the report's preset."""
    files = {k: results_dir / f"{k}.json" for k in ("03_training", "07_beyond_thresholds")}
    if not all(f.is_file() for f in files.values()):
        return []
    r3, r7 = (read_json(f) for f in files.values())
    data = results_dir / "01_problem_and_data.json"
    # notebook 01 records the world's difficulty since the generator's format 3 (#16); without it, these results
    # come from the world before it (one template per chain, clutter only on Other photos) and are not comparable
    older = not data.is_file() or "difficulty" not in read_json(data)
    stale = (" **Measured on the previous synthetic world (generator format 2, before variation within chains and "
             f"the equal clutter rates), so not comparable with the figures above; `make report PRESET={preset}` "
             "updates it.**") if older else ""
    lines = ["", f"The `{preset}` preset ({what}; `make report PRESET={preset}`, {r3['meta']['date']}, "
             f"results in `{shown}/`): closed-set accuracy on test {_num(r3.get('test_accuracy'))} "
             f"(val {_num(r3.get('val_accuracy'))}); Other detectors, test macro-F1:{stale}", "",
             "| detector | macro-F1 | Other F1 | AUROC |", "|---|---|---|---|"]
    for name, v in r7["test"].items():
        lines.append(f"| `{name}` | {_num(v['macro_f1'])} | {_num(v['other_f1'])} | {_num(v['auroc'])} |")
    return lines


def update_readme(readme: str | Path = "README.md", text: str | None = None, *, results_dir: str | Path = "results") -> bool:
    """Replace the README's marked results section with `text` (default: `summary(results_dir)`)."""
    readme = Path(readme)
    content = readme.read_text()
    if BEGIN not in content or END not in content:
        raise ValueError(f"{readme}: no '{BEGIN}' ... '{END}' section to regenerate")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{text if text is not None else summary(results_dir)}\n{END}{tail}"
    if new != content:
        write_text(readme, new)
    return new != content
