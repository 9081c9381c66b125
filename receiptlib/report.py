"""The report: execute notebooks/NN_*.ipynb in order through papermill, and the helper each notebook uses.

A notebook opens with

    nb = rl.report.Notebook("04_thresholds", preset=PRESET, seed=SEED, data_root=DATA_ROOT,
                            figures_dir=FIGURES_DIR, results_dir=RESULTS_DIR)

and then asks it for its data (`nb.dataset()`), its trained run (`nb.run()`), saves figures
(`nb.savefig(fig, "max_logit")` -> figures/04_max_logit.png) and finally its results
(`nb.save_results({...})` -> results/04_thresholds.json). Every notebook therefore runs standalone on a
fresh clone: the library generates or trains what is missing and reuses what exists.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import STN_METHOD_NAMES, jsonable

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"


# --------------------------------------------------------------------------------------------------
# Inside a notebook


def project_root(start: str | Path | None = None) -> Path:
    """The folder holding notebooks/ and receiptlib/ above `start` (default: the working directory), so a
    notebook finds data/, figures/ and results/ whether it runs from notebooks/ (JupyterLab, `receiptlib
    report`, `papermill 04_thresholds.ipynb out.ipynb`) or from the root (`papermill notebooks/04...`).
    Outside a checkout: the working directory itself."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "receiptlib").is_dir():
            return folder
    return here


def _shown_path(path: str | Path) -> str:
    """`path` relative to the project root when it lies inside it (results do not name the checkout's folder)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(project_root()).as_posix()
    except ValueError:
        return str(path)


def _map_strings(value, change, *, keep=lambda key: False):
    """``change`` applied to every string in a JSON-like document, except under the dict keys ``keep`` picks."""
    if isinstance(value, dict):
        return {k: v if keep(k) else _map_strings(v, change, keep=keep) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, change, keep=keep) for v in value]
    return change(value) if isinstance(value, str) else value


def _relative_paths(value):
    """Absolute paths inside the project, anywhere in a results document, made relative to the project root:
    results do not name the folder of the checkout that produced them."""
    prefix = str(project_root()) + os.sep
    return _map_strings(value, lambda s: _shown_path(s) if s.startswith(prefix) else s)


def machine() -> str:
    """This machine in a few words, for the report's timings: CPU model, cores, SIMD level; GPU when present."""
    import torch

    from .timing import cpu_name

    text = f"{cpu_name()}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def training_precision() -> str:
    """What the fast recipe trains in here (train.amp_dtype of "auto"): the report's speed depends on it."""
    from .common import pick_device
    from .train import amp_dtype

    dtype = amp_dtype("auto", pick_device("auto"))
    return f"training in {str(dtype).replace('torch.', '') if dtype is not None else 'float32'}"


@dataclass
class Notebook:
    """What a report notebook needs from its parameters cell, in one object."""

    name: str                      # "NN_topic": prefix of figures, name of the results file
    preset: str = "quick"          # synthetic data preset and matching training preset
    seed: int = 0
    data_root: str | Path | None = None    # synthetic data sets and runs/ live here; None: <project>/data
    data_dir: str | Path | None = None     # a folder of real photos in the same layout replaces the synthetic data
    figures_dir: str | Path | None = None  # None: <project>/figures
    results_dir: str | Path | None = None  # None: <project>/results
    started: float = field(default_factory=time.time, repr=False)

    def __post_init__(self):
        root = project_root()
        self.data_root = Path(self.data_root) if self.data_root is not None else root / "data"
        self.figures_dir = Path(self.figures_dir) if self.figures_dir is not None else root / "figures"
        self.results_dir = Path(self.results_dir) if self.results_dir is not None else root / "results"
        from . import plots

        plots.setup()
        # Python's and NumPy's global generators: figures that draw from them (seaborn's stripplot jitter) come
        # out the same on every run. The library's own randomness has seeded generators of its own.
        import random

        import numpy as np

        random.seed(self.seed)
        np.random.seed(self.seed)

    def dataset(self) -> Path:
        """The data folder: DATA_DIR when given, else the synthetic preset (generated once, then reused)."""
        if self.data_dir is not None:
            path = Path(self.data_dir)
            if not (path / "train").is_dir():
                raise FileNotFoundError(f"DATA_DIR={str(path)!r} has no train/ folder; expected train/, val/, test/ with one subfolder per chain")
            return path
        from . import synth

        return synth.ensure_dataset(self.preset, seed=self.seed, root=self.data_root)

    def train_config(self, **overrides):
        """The training configuration of this preset (rl.runs.report_config), with overrides."""
        from . import runs

        config = runs.report_config(self.preset, seed=self.seed, data_dir=self.dataset())
        if overrides:
            import dataclasses

            config = dataclasses.replace(config, **overrides)
        return config

    def run(self, **overrides):
        """The trained run of this preset: reused when it exists, trained otherwise."""
        from . import runs

        return runs.get_or_train(self.train_config(**overrides), runs_root=self.data_root / "runs")

    def savefig(self, fig, name: str) -> Path:
        from . import plots

        return plots.savefig(fig, f"{self.name[:2]}_{name}", self.figures_dir)

    def save_results(self, results: dict) -> Path:
        """Write results/<name>.json with the preset, seed, device and date it was produced with."""
        import torch

        from .common import pick_device

        device = pick_device("auto")
        meta = {
            "notebook": self.name,
            "preset": self.preset,
            "seed": self.seed,
            "data_dir": _shown_path(self.data_dir) if self.data_dir is not None else None,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "date": time.strftime("%Y-%m-%d"),
            "seconds": round(time.time() - self.started, 1),
        }
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{self.name}.json"
        path.write_text(json.dumps(_relative_paths(jsonable({"meta": meta, **results})), indent=2) + "\n")
        return path


# --------------------------------------------------------------------------------------------------
# The runner behind `receiptlib report` and `make report`


class NotebookFailed(RuntimeError):
    pass


def notebooks(notebooks_dir: str | Path = "notebooks", only: list[str] | None = None) -> list[Path]:
    """The report's notebooks in order; `only` keeps those whose name starts with one of the given prefixes."""
    found = sorted(Path(notebooks_dir).glob(NOTEBOOK_GLOB))
    if not found:
        raise FileNotFoundError(f"no notebooks {NOTEBOOK_GLOB} in {Path(notebooks_dir).resolve()}; run from the repository root")
    if only:
        found = [p for p in found if any(p.name.startswith(o) for o in only)]
        if not found:
            raise FileNotFoundError(f"no notebook in {notebooks_dir} matches {only}")
    return found


def execute(notebook: str | Path, output: str | Path, parameters: dict, *, kernel_name: str = "python3",
            cwd: str | Path | None = None) -> float:
    """Execute one notebook through papermill; returns seconds. Raises NotebookFailed naming the cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook, output = Path(notebook), Path(output)
    # Progress bars off inside the kernel (it inherits this environment): tqdm bars stall papermill logs.
    os.environ["RECEIPTLIB_PROGRESS"] = "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    start = time.time()
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(cwd or notebook.parent), progress_bar=False, log_output=False)
    except PapermillExecutionError as err:
        source = err.source.strip().splitlines()
        first = source[0] if source else ""
        raise NotebookFailed(f"{notebook.name} failed in cell {err.cell_index} (execution count {err.exec_count}: "
                             f"{first!r}): {err.ename}: {err.evalue}; the executed copy is {output}") from None
    except Exception as err:  # a dead kernel, a missing kernelspec, a timeout: still name the notebook
        raise NotebookFailed(f"{notebook.name} could not be executed: {type(err).__name__}: {err}") from err
    return time.time() - start


def relativize_project_paths(notebook: str | Path, root: str | Path) -> None:
    """Make absolute paths under the project root relative to it in an executed notebook's text outputs and
    metadata (papermill's paths, printed file names, warnings), so the committed notebooks, like the results,
    do not name the checkout that produced them. Code cells stay as written, images are not touched, and
    the file keeps nbformat's layout. POSIX paths: on Windows the JSON-escaped backslashes do not match."""
    notebook = Path(notebook)
    prefix = re.compile(r"(?<![\w./-])" + re.escape(str(Path(root).resolve()) + os.sep))  # at a path's start
    doc = json.loads(notebook.read_text(encoding="utf-8"))
    stripped = _map_strings(doc, lambda s: prefix.sub("", s),
                            keep=lambda key: key in ("source", "attachments") or key.startswith("image/"))
    if stripped != doc:  # papermill's own writer: nbformat's layout, no final newline
        notebook.write_text(json.dumps(stripped, indent=1, sort_keys=True, ensure_ascii=False), encoding="utf-8")


def run_report(*, preset: str = "quick", seed: int = 0, only: list[str] | None = None,
               notebooks_dir: str | Path | None = None, output_dir: str | Path | None = None,
               parameters: dict | None = None, workers: int | None = None, log=print) -> list[dict]:
    """Generate the preset's data, then execute every notebook in order (in place unless output_dir).

    Paths default to notebooks/, data/, results/ and README.md at the project root (`project_root`), as do
    the notebooks' own defaults; notebooks execute with notebooks/ as working directory.
    Stops at the first failing notebook; the failed execution is kept as NN_name.failed.ipynb beside it.
    """
    from . import synth

    params = {"PRESET": preset, "SEED": seed, **(parameters or {})}
    root = project_root()
    data_root = Path(params.get("DATA_ROOT") or root / "data")
    if params.get("DATA_DIR") is None:
        start = time.time()
        path = synth.ensure_dataset(preset, seed=seed, root=data_root, workers=workers)
        log(f"data: {path} ready in {time.time() - start:.0f} s")
    data_seconds = round(time.time() - start, 1) if params.get("DATA_DIR") is None else None
    timings = []
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    for nb in notebooks(notebooks_dir or root / "notebooks", only):
        target = Path(output_dir) / nb.name if output_dir else nb
        scratch = target.with_name(target.stem + ".running.ipynb")
        try:
            seconds = execute(nb, scratch, params, cwd=nb.parent)
        except NotebookFailed:
            if scratch.exists():
                scratch.replace(target.with_name(target.stem + ".failed.ipynb"))
            raise
        relativize_project_paths(scratch, root)  # before the rename, which stays the last, atomic step
        scratch.replace(target)
        timings.append({"notebook": nb.name, "seconds": round(seconds, 1)})
        log(f"{nb.name}: {seconds:.0f} s")
    total = sum(t["seconds"] for t in timings) + (data_seconds or 0)
    log(f"report: {len(timings)} notebooks in {total:.0f} s with the data")
    results_dir = Path(params.get("RESULTS_DIR") or root / "results")
    if only is None:  # the whole report: how long it took, and where (README's "Quick start" cites it)
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / REPORT_FILE).write_text(json.dumps(jsonable(
            {"meta": {"preset": preset, "seed": seed, "machine": machine(), "precision": training_precision(),
                      "date": time.strftime("%Y-%m-%d")},
             "data_seconds": data_seconds, "notebooks": timings, "total_seconds": round(total, 1),
             "total_minutes": max(1, round(total / 60))}), indent=2) + "\n")
    readme = root / "README.md"
    if output_dir is None and readme.is_file() and BEGIN in readme.read_text():
        update_readme(readme, results_dir=results_dir)
        log(f"{readme}: results section regenerated")
    return timings


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `receiptlib report`")


# --------------------------------------------------------------------------------------------------
# The results front page: README's marked section, written from results/*.json only

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
REPORT_FILE = "report.json"  # the runner's own timings (results/NN_*.json are the notebooks')


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def summary(results_dir: str | Path = "results", *, link_prefix: str = "") -> str:
    """Markdown summary of the report from the JSON the notebooks saved. Every number in it is one of
    theirs, rounded for display; sections whose notebook has not run are left out."""
    results_dir = Path(results_dir)
    found = {}
    for path in sorted(results_dir.glob("[0-9][0-9]_*.json")):
        r = json.loads(path.read_text())
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
    t = json.loads(timing.read_text()) if timing.is_file() else None
    if t and (t["meta"]["preset"], t["meta"]["seed"]) == (meta["preset"], meta["seed"]):  # the same report's
        steps = ([f"data {_num(t['data_seconds'], 0)} s"] if t.get("data_seconds") is not None else []) + \
            [f"{n['notebook'][:2]} {_num(n['seconds'], 0)} s" for n in t["notebooks"]]
        precision = f", {t['meta']['precision']}" if t["meta"].get("precision") else ""
        lines += [f"- **This run** took {t['total_minutes']} minutes on {t['meta']['machine']}{precision} "
                  f"({', '.join(steps)})."]
    if "03" in found:
        r = found["03"]
        lines += [f"- **Closed-set accuracy** (val, known chains): {_num(r['val_accuracy'])} after {r['epochs']} epochs "
                  f"in {_num(r['train_seconds'], 0)} s, weights `{r['weights_source']}`. {nb(r)}, {fig('03_learning_curves')}"]
    if "04" in found:
        r = found["04"]
        rows = "; ".join(f"{name} {_num(v['macro_f1'])}" for name, v in r["test"].items())
        lines += [f"- **Other by thresholds** (fitted on val, macro-F1 on test): {rows}. {nb(r)}, {fig('04_f1_vs_k')}"]
    if "07" in found:
        r = found["07"]
        lines += ["", f"Every Other detector, fitted on val and reported once on test ({nb(r)}, {fig('07_roc')}):", "",
                  "| detector | macro-F1 | Other F1 | closed-set acc. | AUROC | FPR@95 |", "|---|---|---|---|---|---|"]
        for name, v in r["test"].items():
            lines.append(f"| `{name}` | {_num(v['macro_f1'])} | {_num(v['other_f1'])} | {_num(v['closed_set_accuracy'])} "
                         f"| {_num(v['auroc'])} | {_num(v['fpr_at_95_tpr'])} |")
    if "05" in found:
        lines += ["", *_stn_section(found["05"], nb(found["05"]), fig)]
    if "06" in found:
        r = found["06"]
        lines += ["", f"Time for 10,000 photos, the paper's machines beside this one ({nb(r)}, {fig('06_images_per_second')}; "
                  f"fastest setting that agrees with fp32 on val: `{r['fast_choice']}`):", "",
                  "| hardware | setting | images/s | time for 10,000 |", "|---|---|---|---|"]
        for row in r["paper_table"]:
            lines.append(f"| {row['hardware']} | {row['setting']} | {_num(row['images_per_s'], 1)} | {row['time_for_10000']} |")
    return "\n".join(lines)


_STN_SLICES = {"all": "all test photos", "hard": "hard slice"}


def _stn_section(r: dict, notebook: str, fig) -> list[str]:
    """The STN table of results/05_stn.json: mean ± std over seeds per slice and method."""
    def pm(row, key):
        std = row[f"{key}_std"]
        return _num(row[f"{key}_mean"]) + (f" ± {_num(std)}" if std is not None else "")

    hard = f", hard slice: {r['hard_slice_size']} of {r['test_size']} test photos" if r.get("hard_slice_size") else ""
    lines = [f"Spatial transformer in front of ResNet, section VII: mean ± std over {r['summary'][0]['seeds']} seeds{hard} "
             f"({notebook}, {fig('05_learning_curves')}, {fig('05_stn_outputs_staged')}):", "",
             "| slice | method | closed-set acc. | macro-F1 with Other |", "|---|---|---|---|"]
    for row in r["summary"]:
        lines.append(f"| {_STN_SLICES.get(row['slice'], row['slice'])} | {STN_METHOD_NAMES.get(row['method'], row['method'])} "
                     f"| {pm(row, 'accuracy')} | {pm(row, 'macro_f1')} |")
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
        readme.write_text(new)
    return new != content
