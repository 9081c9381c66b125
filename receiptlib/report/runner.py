"""The runner behind `receiptlib report` and `make report`: execute notebooks/NN_*.ipynb in order through
papermill, record how long each took and on what, and regenerate the README's results section. Its log has
one line per notebook; each executed notebook's first markdown cell says the parameters it ran with."""
from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

import torch

from .. import presets, synth, timing, train
from ..common import pick_device
from ..io import write_json, write_text
from .notebook import map_strings, preset_dir, project_prefix, project_root
from .readme import BEGIN, REPORT_FILE, update_readme

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
PARAMETERS_BEGIN = "<!-- parameters: written by receiptlib's runner from what papermill ran; replaced on every run -->"
PARAMETERS_END = "<!-- parameters: end -->"


class NotebookFailed(RuntimeError):
    pass


def machine() -> str:
    """This machine in a few words, for the report's timings: CPU model, cores, SIMD level; GPU when present."""
    text = f"{timing.cpu_name()}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def training_precision(preset: str = presets.REPORT_PRESET) -> str:
    """What the preset's training recipe trains in here (train.amp_dtype of its `amp`): the report's speed
    depends on it."""
    recipe = train.get_recipe(presets.get(preset).train.get("recipe", "fast"))
    dtype = train.amp_dtype(recipe.amp, pick_device("auto"))
    return f"training in {str(dtype).replace('torch.', '') if dtype is not None else 'float32'}"


def notebooks(notebooks_dir: str | Path = "notebooks", only: list[str] | None = None) -> list[Path]:
    """The report's notebooks in order; `only` keeps those whose name starts with one of the given prefixes. The
    runner's own copies (`NN_x.running.ipynb` of an interrupted run, `NN_x.failed.ipynb`) are not notebooks of it:
    a leftover one was once run after its original and failed the report."""
    found = sorted(p for p in Path(notebooks_dir).glob(NOTEBOOK_GLOB)
                   if not p.name.endswith((".running.ipynb", ".failed.ipynb")))
    if not found:
        raise FileNotFoundError(f"no notebooks {NOTEBOOK_GLOB} in {Path(notebooks_dir).resolve()}; run from the repository root")
    if only:
        found = [p for p in found if any(p.name.startswith(o) for o in only)]
        if not found:
            raise FileNotFoundError(f"no notebook in {notebooks_dir} matches {only}")
    return found


def execute(notebook: str | Path, output: str | Path, parameters: dict, *, kernel_name: str = "python3",
            cwd: str | Path | None = None) -> float:
    """Execute one notebook through papermill; returns seconds. Raises NotebookFailed naming the cell.
    The executed copy's first markdown cell then lists the parameters it ran with (`describe_parameters`)."""
    import papermill
    import zmq
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    notebook, output = Path(notebook), Path(output)
    # Progress bars off inside the kernel (it inherits this environment): tqdm bars stall papermill logs.
    os.environ["RECEIPTLIB_PROGRESS"] = "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # ipykernel warns on stderr, once per kernel, when its sockets are plain TCP; the kernel manager gives it
    # CurveZMQ keys where the kernelspec declares support ("auto"), so the channel is encrypted and it is quiet.
    config = Config({"KernelManager": {"transport_encryption": "auto"}}) if zmq.has("curve") else Config()
    start = time.time()
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(cwd or notebook.parent), progress_bar=False, log_output=False,
                                   config=config)
    except PapermillExecutionError as err:
        source = err.source.strip().splitlines()
        first = source[0] if source else ""
        raise NotebookFailed(f"{notebook.name} failed in cell {err.cell_index} (execution count {err.exec_count}: "
                             f"{first!r}): {err.ename}: {err.evalue}; the executed copy is {output}") from None
    except Exception as err:  # a dead kernel, a missing kernelspec, a timeout: still name the notebook
        raise NotebookFailed(f"{notebook.name} could not be executed: {type(err).__name__}: {err}") from err
    seconds = time.time() - start
    doc = json.loads(output.read_text(encoding="utf-8"))
    write_notebook(output, describe_parameters(doc))
    return seconds


def write_notebook(path: str | Path, doc: dict) -> Path:
    """Write a notebook document as papermill does: nbformat's layout, sorted keys, no final newline."""
    return write_text(path, json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False))


def describe_parameters(doc: dict, root: str | Path | None = None) -> dict:
    """An executed notebook document (papermill's) with its first markdown cell listing the parameters it ran
    with, in a sentence and one line each: those papermill injected, then the defaults of the cell tagged
    `parameters`. The block sits between PARAMETERS_BEGIN and PARAMETERS_END, replaced on every run; a notebook
    without a markdown cell gets one first. Paths inside the project are shown relative to it."""
    from papermill.translators import PythonTranslator

    prefix = project_prefix(root)
    passed = doc.get("metadata", {}).get("papermill", {}).get("parameters", {})
    source = lambda value: prefix.sub("", PythonTranslator.translate(value))  # noqa: E731  (as the injected cell)
    cells = doc.setdefault("cells", [])
    tagged = [c for c in cells if c.get("cell_type") == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    defaults = {}
    if tagged:
        cell = {"cell_type": "code", "metadata": {}, "source": "".join(tagged[0]["source"])}
        defaults = {p.name: (prefix.sub("", p.default), p.help) for p in PythonTranslator.inspect(cell)}
    kept = {name: value for name, value in defaults.items() if name not in passed}
    lines = [PARAMETERS_BEGIN, f"**Parameters of this run.** {parameters_sentence(passed, source, bool(kept))}", ""]
    lines += [f"- `{name} = {source(value)}` (passed)" for name, value in passed.items()]
    lines += [f"- `{name} = {value}` (default{': ' + html.escape(help, quote=False) if help else ''})"
              for name, (value, help) in kept.items()]  # escaped: "figures/<PRESET>/" is not an HTML tag
    block = "\n".join([*lines, PARAMETERS_END])
    first = next((c for c in cells if c.get("cell_type") == "markdown"), None)
    if first is None:
        first = {"cell_type": "markdown", "id": "parameters-of-this-run", "metadata": {}, "source": ""}
        cells.insert(0, first)
    text = "".join(first["source"])
    if PARAMETERS_BEGIN in text:  # a notebook executed in place carries the previous run's block
        before, rest = text.split(PARAMETERS_BEGIN, 1)
        text, after = before, rest.split(PARAMETERS_END, 1)[-1]
    else:
        after = ""
    text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block + after
    first["source"] = text.splitlines(keepends=True)
    return doc


def parameters_sentence(passed: dict, source, others: bool) -> str:
    """The parameters papermill injected, in a sentence ("It ran on the `quick` preset with seed 0, as passed
    to papermill; ..."); ``source`` writes a value as Python, ``others``: whether defaults are left."""
    rest = dict(passed)
    words = f" on the `{rest.pop('PRESET')}` preset" if isinstance(rest.get("PRESET"), str) else ""
    if "SEED" in rest:
        words += f" with seed {source(rest.pop('SEED'))}"
    if rest:
        words += (", and" if words else "") + " with " + ", ".join(f"`{name} = {source(value)}`"
                                                                 for name, value in rest.items())
    if not words:
        return "Nothing was passed to papermill: it ran with the defaults of the cell tagged `parameters`."
    sentence = f"It ran{words}, as passed to papermill (the cell tagged `injected-parameters`)"
    return sentence + ("; the other parameters kept the defaults of the cell tagged `parameters`." if others else ".")


def relativize_project_paths(notebook: str | Path, root: str | Path) -> None:
    """Make absolute paths under the project root relative to it in an executed notebook's text outputs and
    metadata (papermill's paths, printed file names, warnings), so the committed notebooks, like the results,
    do not name the checkout that produced them. Code cells stay as written, images are not touched, and
    the file keeps nbformat's layout. POSIX paths: on Windows the JSON-escaped backslashes do not match."""
    notebook = Path(notebook)
    prefix = project_prefix(root)
    doc = json.loads(notebook.read_text(encoding="utf-8"))
    stripped = map_strings(doc, lambda s: prefix.sub("", s),
                           keep=lambda key: key in ("source", "attachments") or key.startswith("image/"))
    if stripped != doc:
        write_notebook(notebook, stripped)


def run_report(*, preset: str = presets.REPORT_PRESET, seed: int = 0, only: list[str] | None = None,
               notebooks_dir: str | Path | None = None, output_dir: str | Path | None = None,
               parameters: dict | None = None, workers: int | None = None, log=print) -> list[dict]:
    """Generate the preset's data, then execute every notebook in order: in place for the report's own preset
    (presets.REPORT_PRESET), in build/notebooks/<preset>/ for any other, unless output_dir says where.

    Paths default to notebooks/, data/ and README.md at the project root (`project_root`), and to the
    preset's results folder (`preset_dir`), as do the notebooks' own defaults; notebooks execute with
    notebooks/ as working directory. The README's results section is regenerated only from the report
    preset's results/ (presets.REPORT_PRESET, no RESULTS_DIR elsewhere).
    Stops at the first failing notebook; the failed execution is kept as NN_name.failed.ipynb beside it.
    """
    params = {"PRESET": preset, "SEED": seed, **(parameters or {})}
    root = project_root()
    data_root = Path(params.get("DATA_ROOT") or root / "data")
    if params.get("DATA_DIR") is None:
        start = time.time()
        path = synth.ensure_dataset(preset, seed=seed, root=data_root, workers=workers)
        log(f"data: {path} ready in {time.time() - start:.0f} s")
    data_seconds = round(time.time() - start, 1) if params.get("DATA_DIR") is None else None
    timings = []
    in_place = output_dir is None and preset == presets.REPORT_PRESET  # the committed notebooks are the report's
    if output_dir is None and not in_place:
        output_dir = root / "build" / "notebooks" / preset
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
    results_dir = Path(params.get("RESULTS_DIR") or preset_dir("results", preset, root))
    if only is None:  # the whole report: how long it took, and where (README's "Quick start" cites it)
        results_dir.mkdir(parents=True, exist_ok=True)
        write_json(results_dir / REPORT_FILE, {
            "meta": {"preset": preset, "seed": seed, "machine": machine(), "precision": training_precision(preset),
                     "date": time.strftime("%Y-%m-%d")},
            "data_seconds": data_seconds, "notebooks": timings, "total_seconds": round(total, 1),
            "total_minutes": max(1, round(total / 60))})
    readme = root / "README.md"
    report_results = preset_dir("results", presets.REPORT_PRESET, root)
    if (in_place and results_dir.resolve() == report_results.resolve() and readme.is_file()
            and BEGIN in readme.read_text()):
        update_readme(readme, results_dir=results_dir)
        log(f"{readme}: results section regenerated")
    return timings
