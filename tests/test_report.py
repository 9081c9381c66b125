"""The README's results section is generated from results/*.json: no number in it is typed by hand."""
import json
import re
from pathlib import Path

import pytest

import receiptlib as rl

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_NUMBERS = {"10,000", "95"}  # words of the summary's own headings ("time for 10,000", "FPR@95")


def section(text: str) -> str:
    return text.split(rl.report.BEGIN, 1)[1].split(rl.report.END, 1)[0]


def leaves_and_keys(obj):
    """Every leaf value of a JSON document, and every key (keys name classes and detectors)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from leaves_and_keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from leaves_and_keys(v)
    else:
        yield obj


def numbers_are_from(text: str, results: list[dict]) -> list[str]:
    """The number tokens of `text` that no JSON value explains (a number rounding to it, or a string holding it)."""
    values = [v for r in results for v in leaves_and_keys(r)]
    strings = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    unexplained = []
    for signed in re.findall(r"[+-]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)", text):
        token = signed.lstrip("+-")
        if token in TEMPLATE_NUMBERS or any(token in s for s in strings):
            continue
        digits = len(token.split(".")[1]) if "." in token else 0
        # a signed token ("+0.020", "-0.031": the README's differences) must match the number with its sign
        forms = (lambda n: f"{n:+.{digits}f}") if signed[0] in "+-" else (lambda n: f"{abs(n):.{digits}f}")
        if not any(forms(n) == signed for n in numbers):
            unexplained.append(token)
    return unexplained


def test_summary_numbers_come_from_the_json(tmp_path):
    results = {"03_training": {"meta": {"notebook": "03_training", "preset": "quick", "seed": 0, "device": "cpu (2 cores)",
                                        "date": "2026-11-22"},
                               "val_accuracy": 0.91234, "epochs": 15, "train_seconds": 431.7, "weights_source": "none"}}
    for name, r in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    text = rl.report.summary(tmp_path)
    assert "0.912" in text and "15 epochs" in text
    assert numbers_are_from(text, list(results.values())) == []
    assert numbers_are_from(text.replace("0.912", "0.913"), list(results.values())) == ["0.913"]


def test_stn_table_numbers_come_from_the_json(tmp_path):
    meta = {"preset": "quick", "seed": 0, "device": "cpu (2 cores)", "date": "2026-11-22"}
    (tmp_path / "03_training.json").write_text(json.dumps(
        {"meta": {**meta, "notebook": "03_training"}, "val_accuracy": 0.5, "epochs": 15, "train_seconds": 431.7,
         "weights_source": "none"}))
    assert "Spatial transformer" not in rl.report.summary(tmp_path)  # notebook 05 has not run: no section
    rows = [{"slice": sl, "arm": m, "accuracy_mean": 0.41234 + i / 100, "accuracy_std": 0.0123,
             "macro_f1_mean": 0.31234 + i / 100, "macro_f1_std": 0.0234, "seeds": 3, "n_test": n,
             "accuracy_diff": i / 100, "accuracy_diff_low": i / 100 - 0.0211, "accuracy_diff_high": i / 100 + 0.0187,
             "macro_f1_diff": i / 100, "macro_f1_diff_low": -0.0311, "macro_f1_diff_high": 0.0421,
             **({} if m == "finetune" else {"mean_zoom": 0.8765, "mean_abs_rotation_deg": 6.54,
                                            "hard_mean_zoom": 0.7654, "hard_mean_abs_rotation_deg": 9.87})}
            for sl, n in (("all", 1200), ("hard", 522)) for i, m in enumerate(("finetune", "joint", "staged"))]
    oracle = {"identity": {"accuracy": 0.9471, "hard_accuracy": 0.8912}, "oracle": {"accuracy": 0.9063, "hard_accuracy": 0.9171},
              "n_hard_known": 193}
    stn = {"meta": {**meta, "notebook": "05_stn"}, "seeds": [0, 1, 2], "summary": rows, "hard_slice_size": 522,
           "test_size": 1200, "conclusion": "text", "oracle": oracle}
    (tmp_path / "05_stn.json").write_text(json.dumps(stn))
    text = rl.report.summary(tmp_path)
    assert ("| hard slice | C: staged | 3 | 0.432 ± 0.012 | +0.020 (-0.001, +0.039) | 0.332 ± 0.023 | +0.020 (-0.031, "
            "+0.042) | 0.765, 9.9° |") in text and "05_stn.ipynb" in text
    assert "| all test photos | A: no transformer | 3 | 0.412 ± 0.012 | — |" in text
    assert "0.947 → 0.906" in text and "193 known photos 0.891 → 0.917" in text
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert numbers_are_from(text, results) == []


def test_readme_section_is_regenerated_in_place(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rl.report.BEGIN}\nold\n{rl.report.END}\noutro\n")
    assert rl.report.update_readme(readme, "new text")
    assert readme.read_text() == f"intro\n{rl.report.BEGIN}\nnew text\n{rl.report.END}\noutro\n"
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="README.md"):
        rl.report.update_readme(readme, "x")


def test_committed_readme_matches_committed_results():
    results_dir = REPO / "results"
    # the report preset's results, and another preset's summarised beside them (results/hard/)
    results = [json.loads(p.read_text()) for p in sorted(results_dir.rglob("*.json"))]
    text = section((REPO / "README.md").read_text()).strip()
    assert text == rl.report.summary(results_dir).strip(), "README's results section is stale: run `make report`"
    assert numbers_are_from(text, results) == []


def test_runner_records_its_timings_and_the_summary_cites_them(tmp_path, capfd):
    import nbformat

    nb_dir, out_dir, results = tmp_path / "notebooks", tmp_path / "executed", tmp_path / "results"
    nb_dir.mkdir()
    for name in ("01_a.ipynb", "02_b.ipynb"):
        cell = nbformat.v4.new_code_cell("SEED = 0\nPRESET = 'quick'\nDATA_DIR = None\nRESULTS_DIR = None  # results")
        cell.metadata["tags"] = ["parameters"]
        root = rl.report.project_root()
        shown, elsewhere, image = root / "figures" / "x.png", f"/backup{root}/y.png", f"{root}/abc"  # paths a cell prints
        code = (f"x = SEED + 1\nprint({str(shown)!r})\nprint({elsewhere!r})\nfrom IPython.display import display\n"
                f"display({{'image/png': {image!r}, 'text/plain': 'an image'}}, raw=True)")
        nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, nb_dir / name)
    capfd.readouterr()
    logged = []
    timings = rl.report.run_report(notebooks_dir=nb_dir, output_dir=out_dir, log=logged.append,
                                   parameters={"DATA_DIR": str(tmp_path), "RESULTS_DIR": str(results)})
    assert [t["notebook"] for t in timings] == ["01_a.ipynb", "02_b.ipynb"]
    # The log: one line per notebook, then the total; the kernels wrote nothing to the terminal (ipykernel's
    # "running over TCP without encryption" warning came once per notebook before the runner encrypted it).
    assert [re.sub(r"\d+ s", "N s", line) for line in logged] == ["01_a.ipynb: N s", "02_b.ipynb: N s",
                                                                "report: 2 notebooks in N s with the data"]
    assert capfd.readouterr().err == ""
    assert sorted(p.name for p in out_dir.iterdir()) == ["01_a.ipynb", "02_b.ipynb"]
    executed = nbformat.read(out_dir / "01_a.ipynb", as_version=4)
    nbformat.validate(executed)
    stream, shown_image = executed.cells[-1].outputs
    assert stream.text.splitlines() == ["figures/x.png", elsewhere]  # no checkout folder; a path that only contains it kept
    assert shown_image.data["image/png"] == image  # images untouched
    assert str(shown) in executed.cells[-1].source  # the code as written
    listing = executed.cells[0]  # a notebook without a markdown cell gets one, listing the parameters
    assert listing.cell_type == "markdown" and "It ran on the `quick` preset with seed 0" in listing.source
    assert f'- `RESULTS_DIR = "{results}"` (passed)' in listing.source and "`DATA_DIR = " in listing.source
    record = json.loads((results / rl.report.REPORT_FILE).read_text())
    assert record["notebooks"] == timings and record["data_seconds"] is None  # DATA_DIR given: nothing generated
    assert record["total_seconds"] == pytest.approx(sum(t["seconds"] for t in timings), abs=0.2)
    notebook_result = {"meta": {"notebook": "03_training", "preset": "quick", "seed": 0, "device": "cpu (2 cores)",
                                "date": "2026-11-30"}, "val_accuracy": 0.5, "epochs": 3, "train_seconds": 9.5,
                       "weights_source": "none"}
    (results / "03_training.json").write_text(json.dumps(notebook_result))
    text = rl.report.summary(results)
    assert f"took {record['total_minutes']} minutes on {record['meta']['machine']}" in text
    assert numbers_are_from(text, [record, notebook_result]) == []


def test_first_markdown_cell_lists_the_parameters_once_per_run():
    import nbformat

    params = nbformat.v4.new_code_cell('PRESET = "quick"  # data preset\nSEED = 0\nDATA_ROOT = None  # None: data/<PRESET>')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 09 · A title\n\nTwo sentences."), params])
    nb.metadata["papermill"] = {"parameters": {"PRESET": "tiny", "SEED": 3, "DATA_ROOT": f"{REPO}/data"}}
    doc = rl.report.describe_parameters(json.loads(nbformat.writes(nb)), root=REPO)
    text = "".join(doc["cells"][0]["source"])
    assert text.startswith("# 09 · A title\n\nTwo sentences.\n\n")
    assert ("It ran on the `tiny` preset with seed 3, and with `DATA_ROOT = \"data\"`, as passed to papermill" in text)
    assert '- `PRESET = "tiny"` (passed)' in text and '- `DATA_ROOT = "data"` (passed)' in text  # no checkout folder
    assert "(default" not in text  # every parameter was passed
    del doc["metadata"]["papermill"]["parameters"]["SEED"]  # the next run in place: one block, the new one
    again = "".join(rl.report.describe_parameters(doc, root=REPO)["cells"][0]["source"])
    assert again.count("Parameters of this run") == 1 and "- `SEED = 0` (default)" in again
    assert "with seed 3" not in again and again.startswith("# 09 · A title\n\nTwo sentences.\n\n")
    nbformat.validate(nbformat.reads(json.dumps(doc), as_version=4))


def test_notebook_seeds_the_global_generators(tmp_path):
    import random

    import numpy as np

    def draws(seed):
        rl.report.Notebook("04_x", seed=seed, data_root=tmp_path, figures_dir=tmp_path, results_dir=tmp_path)
        return np.random.uniform(size=3).tolist(), random.random()

    assert draws(3) == draws(3)  # e.g. seaborn's stripplot jitter: the same figure on every run
    assert draws(3) != draws(4)


def test_results_name_paths_inside_the_project_relative_to_it(tmp_path):
    root = rl.report.project_root()
    nb = rl.report.Notebook("04_x", data_root=tmp_path, figures_dir=tmp_path, results_dir=tmp_path)
    saved = json.loads(nb.save_results({"figure": str(root / "figures" / "x.png"),
                                        "others": [f"{root}2/y.png", "/elsewhere/z.png", 3]}).read_text())
    assert saved["figure"] == "figures/x.png"
    assert saved["others"] == [f"{root}2/y.png", "/elsewhere/z.png", 3]  # outside the project: as given


def test_another_preset_writes_under_its_own_folders(tmp_path, monkeypatch):
    """A notebook run on a preset other than the report's must not overwrite the committed figures/results."""
    for folder in ("notebooks", "receiptlib"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # a project root of its own
    assert rl.presets.REPORT_PRESET == "quick"
    assert rl.report.preset_dir("figures", "quick") == tmp_path / "figures"
    assert rl.report.preset_dir("results", "tiny") == tmp_path / "results" / "tiny"
    quick = rl.report.Notebook("05_x", preset="quick", data_root=tmp_path / "data")
    tiny = rl.report.Notebook("05_x", preset="tiny", data_root=tmp_path / "data")
    assert (quick.figures_dir, quick.results_dir) == (tmp_path / "figures", tmp_path / "results")
    assert (tiny.figures_dir, tiny.results_dir) == (tmp_path / "figures" / "tiny", tmp_path / "results" / "tiny")
    given = rl.report.Notebook("05_x", preset="tiny", figures_dir=tmp_path / "f", results_dir=tmp_path / "r")
    assert (given.figures_dir, given.results_dir) == (tmp_path / "f", tmp_path / "r")  # explicit folders win
    assert not (tmp_path / "figures").exists() and not (tmp_path / "results").exists()  # nothing written yet


def test_runner_regenerates_the_readme_from_the_report_preset_only(tmp_path, monkeypatch):
    for folder in ("notebooks", "receiptlib"):
        (tmp_path / folder).mkdir()
    (tmp_path / "notebooks" / "01_a.ipynb").write_text("{}")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rl.report.BEGIN}\nold\n{rl.report.END}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rl.report.runner, "execute", lambda nb, out, params, cwd: Path(out).write_text("{}") and 1.0)
    monkeypatch.setattr(rl.report.runner, "machine", lambda: "a machine")
    run = lambda preset: rl.report.run_report(preset=preset, parameters={"DATA_DIR": str(tmp_path)},  # noqa: E731
                                              log=lambda *_: None)
    run("tiny")
    assert (tmp_path / "results" / "tiny" / rl.report.REPORT_FILE).is_file()
    assert not (tmp_path / "results" / rl.report.REPORT_FILE).exists() and "old" in readme.read_text()
    run("quick")
    assert (tmp_path / "results" / rl.report.REPORT_FILE).is_file() and "old" not in readme.read_text()


def test_notebook_settings_are_the_presets_with_overrides():
    quick = {section: rl.report.settings("quick", section) for section in ("residual", "paper_recipe", "stn", "bench")}
    # the values the report's notebooks had in their parameters cells before they moved to rl.presets
    assert quick["residual"] == dict(rl.presets.get("quick").residual) and quick["residual"]["depths"] == (4, 8, 16)
    assert quick["paper_recipe"] == dict(epochs=1, max_train_images=600, image_size=224)
    assert quick["stn"] == dict(seeds=(0, 1, 2), stage1="report", single_seed_arms=("identity", "staged_norot"),
                                image_size=160, view_size=320, max_train_images=1280, stage2_epochs=1, transform="rts")
    assert quick["stn"]["image_size"] == rl.presets.get("quick").train["image_size"]  # stage 1 is notebook 03's run
    assert quick["bench"] == dict(image_size=224, batch_size=16, repeats=10, e2e_images=256, n_val=1000,
                                  backends=("torch-fp32", "torch-channels_last", "torch-bf16", "onnx-fp32", "onnx-int8"))
    nb = rl.report.Notebook("06_x", preset="tiny", data_root="unused", figures_dir="unused", results_dir="unused")
    bench = nb.settings("bench", image_size=None, repeats=3, backends="torch-fp32,onnx-int8")
    assert bench == {**rl.presets.get("tiny").bench, "repeats": 3, "backends": ("torch-fp32", "onnx-int8")}
    assert nb.settings("stn", seeds=[4, 5])["seeds"] == (4, 5)  # papermill passes lists, not tuples
    with pytest.raises(ValueError, match="repeat"):
        nb.settings("bench", repeat=3)
    with pytest.raises(ValueError, match="section"):
        nb.settings("benchmark")


def test_throughput_figure_draws_a_bar_and_a_ceiling_per_backend():
    import matplotlib.pyplot as plt
    import pandas as pd

    row = dict(ceiling_gflops=400.0, gflop_per_image=2.0, error=None)
    timings = pd.DataFrame([
        {**row, "backend": "torch-fp32", "mode": "model", "images_per_s": 100.0},
        {**row, "backend": "onnx-int8", "mode": "model", "images_per_s": 150.0, "ceiling_gflops": 900.0},
        {**row, "backend": "torch-bf16", "mode": "model", "images_per_s": None, "error": "not on this CPU"},
        {**row, "backend": "torch-fp32", "mode": "end_to_end", "images_per_s": 50.0},
    ])
    fig = rl.report.plots.throughput_figure(timings, image_size=64, batch_size=16)
    model, e2e = fig.axes
    assert [p.get_width() for p in model.patches] == [100.0, 150.0]  # the failed setting has no bar
    assert [t.get_text() for t in model.get_yticklabels()] == ["torch-fp32", "onnx-int8"]
    assert [list(line.get_xdata()) for line in model.lines] == [[200.0, 200.0], [450.0, 450.0]]  # ceiling / GFLOP
    assert [p.get_width() for p in e2e.patches] == [50.0] and len(e2e.lines) == 1
    assert model.get_title() == "model (64 px, batch 16); red: ceiling" and e2e.get_title().startswith("end to end")
    plt.close(fig)


def test_savefig_writes_one_png_and_no_temporary_file(tmp_path):
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    path = rl.report.plots.savefig(fig, "04_x", tmp_path / "figures")
    plt.close(fig)
    assert path == tmp_path / "figures" / "04_x.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in path.parent.iterdir()] == ["04_x.png"]


def test_run_comparison_table_from_runs():
    import types

    import pandas as pd

    def run(recipe, max_train_images, seconds, speed, acc, **config):
        return types.SimpleNamespace(config={"recipe": recipe, "max_train_images": max_train_images, **config},
                                     history=pd.DataFrame({"seconds": seconds, "images_per_second": speed,
                                                           "val_acc": [0.5] * len(seconds)}),
                                     metrics={"val_accuracy": acc, "test_accuracy": acc - 0.01})

    paper = run({"batch_size": 4, "image_size": 224, "schedule": "exponential"}, 600, [30.0], [20.0], 0.2)
    fast = run({"batch_size": 32, "image_size": 64, "optimizer": "adamw", "schedule": "warmup_cosine"}, None,
               [10.0, 12.0], [200.0, 220.0], 0.9, arch="efficientnet_lite0", weights_source="imagenet:/x/lite0.pth")
    table = rl.report.run_comparison({"paper": paper, "fast": fast})
    assert list(table.index) == ["paper", "fast"]
    assert table.loc["paper", "optimizer"] == "sgd" and table.loc["paper", "train_images"] == 600  # sgd: the default
    assert table.loc["fast", "train_images"] == "all" and table.loc["fast", "epochs"] == 2
    assert table.loc["fast", "wall_seconds"] == 22.0 and table.loc["fast", "images_per_second"] == 210.0
    assert table.to_dict(orient="index")["fast"]["val_accuracy"] == 0.9
    assert table.loc["fast", "test_accuracy"] == 0.9 - 0.01 and table.loc["fast", "val_accuracy_epoch_1"] == 0.5
    assert (table.loc["paper", "arch"], table.loc["paper", "weights"]) == ("resnet18", "none")
    assert (table.loc["fast", "arch"], table.loc["fast", "weights"]) == ("efficientnet_lite0", "imagenet")


def test_another_presets_summary_says_when_it_comes_from_an_older_world(tmp_path):
    meta = {"date": "2026-12-02", "preset": "hard", "seed": 0}
    (tmp_path / "03_training.json").write_text(json.dumps({"meta": meta, "test_accuracy": 0.9, "val_accuracy": 0.9}))
    (tmp_path / "07_beyond_thresholds.json").write_text(json.dumps(
        {"meta": meta, "test": {"MaxLogit()": {"macro_f1": 0.8, "other_f1": 0.7, "auroc": 0.9}}}))
    old = "\n".join(rl.report.readme.other_preset_lines(tmp_path, "hard", "x", shown="results/hard"))
    assert "previous synthetic world" in old and "| `MaxLogit()` | 0.800 |" in old
    (tmp_path / "01_problem_and_data.json").write_text(json.dumps({"meta": meta, "difficulty": 1.0}))
    new = "\n".join(rl.report.readme.other_preset_lines(tmp_path, "hard", "x", shown="results/hard"))
    assert "previous synthetic world" not in new and "| `MaxLogit()` | 0.800 |" in new


def test_notebooks_skip_the_runners_leftover_copies(tmp_path):
    for name in ("01_a.ipynb", "02_b.ipynb", "02_b.running.ipynb", "01_a.failed.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in rl.report.notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb"]
    assert [p.name for p in rl.report.notebooks(tmp_path, only=["02"])] == ["02_b.ipynb"]
