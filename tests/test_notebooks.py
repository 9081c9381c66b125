"""Each report notebook runs through papermill on the tiny preset; we assert on the JSON it saved."""
import json
import re
from pathlib import Path

import pytest

import receiptlib as rl

NOTEBOOKS = rl.report.notebooks(Path(__file__).resolve().parent.parent / "notebooks")


def check_01(results):
    counts = results["counts"]
    assert set(counts) == {"train", "val", "test"}
    assert "Other" not in counts["train"]
    assert counts["val"]["Other"] > 0 and counts["test"]["Other"] > 0
    assert results["n_known_classes"] == 25
    assert results["unknown_chains_disjoint"] is True
    assert results["lookalike_photos"] > 0 and results["logo_in_frame_photos"] > 0
    assert set(results["distortions_shown"]) == set(rl.synth.DISTORTIONS)
    # clutter at the same rate for known and Other photos; the rate table names any property that differs
    rates = results["logo_in_frame_rate"]
    assert rates["known"] > 0 and rates["Other"] > 0
    assert isinstance(results["confounds"], list) and "logo in frame" not in results["confounds"]
    assert set(results["lookalike_kinds"]) <= set(rl.synth.chains.LOOKALIKE_KINDS)
    shares = results["distortion_shares"]
    assert shares["difficulty 1"]["rotation"] >= shares["difficulty 0.3"]["rotation"] > 0


def check_02(results):
    ratio = results["first_to_last_grad_ratio"]
    # the vanishing-gradient argument of section IV, measured: orders of magnitude apart
    assert ratio["plain"] < 1e-3 * ratio["residual"]
    assert results["resnet18_parameters"] > 11_000_000


def check_03(results):
    assert 0.0 <= results["val_accuracy"] <= 1.0 and 0.0 <= results["test_accuracy"] <= 1.0
    assert results["test_known_photos"] > 0  # the quoted accuracy is test's, on its known photos
    low, high = results["test_accuracy_interval"]
    assert low <= results["test_accuracy"] <= high
    recipes = results["recipes"]
    assert recipes["paper"]["batch_size"] == 4 and recipes["paper"]["optimizer"] == "sgd"  # section V as written
    ours = recipes[rl.presets.get("tiny").train["recipe"]]
    assert ours["epochs"] >= 1 and ours["wall_seconds"] > 0
    transfer = results["transfer"]
    assert {"ImageNet, fine-tuned", "same backbone, scratch", "ResNet18, scratch"} <= set(transfer)
    assert transfer["ImageNet, fine-tuned"]["weights"] == "imagenet" and transfer["same backbone, scratch"]["weights"] == "none"
    assert transfer["ResNet18, scratch"]["arch"] == "resnet18"
    assert results["weights_source"].startswith("imagenet")  # the weights actually used are recorded


def check_04(results):
    detector = rl.openset.load_thresholds(results["thresholds_file"])  # the tuner's file is valid
    assert isinstance(detector, rl.openset.PerClassLogit)
    k = rl.openset.PAPER_K  # one k everywhere: the notebook's rows, notebook 07 and default_detectors
    assert results["k"] == k and detector.params["k"] == k
    assert list(results["test"]) == ["global softmax 0.9", "global max softmax, fitted on val",
                                     "global max logit, fitted on val", f"per-class mean − {k:g}·std",
                                     "per-class fitted on val"]
    for row in results["test"].values():
        assert 0.0 <= row["macro_f1"] <= 1.0
        assert row["f1_low"] <= row["macro_f1"] + 1e-9 and row["macro_f1"] <= row["f1_high"] + 1e-9
    # the paper-faithful row uses a run trained without label smoothing, as its recorded recipe says
    paper = results["paper_first_try"]
    assert paper["row"] in results["test"] and paper["threshold"] == 0.9 and paper["label_smoothing"] == 0.0
    run_dir = Path(paper["run_dir"])
    run_dir = run_dir if run_dir.is_absolute() else Path(__file__).resolve().parent.parent / run_dir
    assert rl.openset.label_smoothing_of(rl.runs.Run(run_dir)) == 0.0
    assert paper["run"] == run_dir.name and (paper["run"] == results["run"]) == (paper["report_run_label_smoothing"] == 0)
    # the two protocols, labelled, on the same evaluation photos, with fits of the same size
    protocols = results["protocols"]
    assert set(protocols["labels"]) == {"disjoint", "same_chains"} and results["test_protocol"] == protocols["labels"]["disjoint"]
    fit = protocols["counts"]["fit"]
    assert fit["disjoint"] == fit["same_chains"] and fit["same_chains"]["other"] > 0
    assert set(protocols["rows"]) == set(results["test"]) - {paper["row"]}
    for row in protocols["rows"].values():
        assert row["difference"] == pytest.approx(row["same_chains"]["macro_f1"] - row["disjoint"]["macro_f1"])
    assert protocols["rows"][f"per-class mean − {k:g}·std"]["difference"] == 0.0  # uses no Other photo at all
    assert len(results["conclusions"]) == 3 and len(protocols["conclusions"]) == len(protocols["rows"])
    assert results["best_k"] in results["val_macro_f1_vs_k"]["k"]
    presets = {p["name"]: p for p in results["presets"]}
    assert set(presets) == {"tpr95", "youden", "macro_f1", "reject_rate"} and presets["macro_f1"]["k"] == results["best_k"]
    assert all(p["k"] in results["val_macro_f1_vs_k"]["k"] and p["boundary"] == (p["warning"] is not None)
               for p in presets.values())


def check_05(results):
    arms = set(rl.stn.ARMS)
    assert set(results["arms"]) == arms and len(results["seeds"]) >= 3  # at least 3 seeds
    slices = {"all", "hard"} if results["hard_slice_size"] is not None else {"all"}  # hard needs a manifest
    assert {(r["arm"], r["slice"]) for r in results["summary"]} == {(a, s) for a in arms for s in slices}
    single = set(results["single_seed_arms"])
    for arm, row in results["arms"].items():
        assert row["seeds"] == (1 if arm in single else len(results["seeds"]))
        assert 0.0 <= row["closed_set_accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0
        if "hard" in slices:
            assert 0.0 <= row["hard"]["closed_set_accuracy"] <= 1.0 and row["hard"]["hard_slice_size"] == results["hard_slice_size"]
        if arm == "finetune":
            assert row["closed_set_accuracy_std"] >= 0.0 and row["mean_zoom"] is None  # >= 2 seeds: a real spread
        else:
            low, high = row["accuracy_diff_vs_a"][1:]
            assert low <= high and row["mean_zoom"] > 0 and row["mean_abs_rotation_deg"] >= 0
    # stage 1 is notebook 03's fine-tuned classifier; the oracle ceiling and the hard slice come from the manifest
    assert results["stage1"]["source"] == "report" and results["stage1"]["run"]
    assert results["oracle"]["n_known"] > 0 and 0 < results["hard_slice_size"] < results["test_size"]
    assert str(results["loc_mult"]) in results["loc_scores"]
    assert {m["arm"] for m in results["mechanism"]} == arms - {"finetune"}

def check_06(results):
    assert {r["backend"] for r in results["timings"]} >= {"torch-fp32", "onnx-int8"}
    assert all(r["images_per_s"] > 0 for r in results["timings"] if r["error"] is None)
    assert [r["setting"] for r in results["paper_table"]][:3] == ["paper"] * 3  # the paper's three machines first
    chosen = [a for a in results["agreement"] if a["backend"] == results["fast_choice"]]
    assert chosen and (chosen[0]["qualifies"] or results["fast_choice"] == "torch-fp32")


def check_07(results):
    table = results["test"]
    assert len(table) >= 10 and any(name.startswith("Voting") for name in table)
    for row in table.values():
        assert 0.0 <= row["macro_f1"] <= 1.0 and 0.0 <= row["auroc"] <= 1.0
    assert "kind of photo" in results["error_rate_by"]
    assert any(name.startswith("TTAMaxLogit") for name in table)  # Voting's equal-compute baseline
    assert set(results["intervals"]) == set(table) and results["best"] in table
    for name, iv in results["intervals"].items():
        assert iv["low"] <= table[name]["macro_f1"] + 1e-9 and table[name]["macro_f1"] <= iv["high"] + 1e-9
    assert results["intervals"][results["interval_reference"]]["diff_high"] == 0.0  # paired with itself
    cues = results["cue_ablation"]  # what the classifier reads: header or body masked, on test's known photos
    assert set(cues) == {"none", "header", "body"} and len({row["n"] for row in cues.values()}) == 1
    for row in cues.values():
        assert row["low"] <= row["accuracy"] <= row["high"]


CHECKS = {"01": check_01, "02": check_02, "03": check_03, "04": check_04, "05": check_05, "06": check_06,
          "07": check_07}


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_tiny_preset(notebook, report_dirs):
    # the notebooks' sizes left at None: the tiny preset's (rl.presets.PRESETS["tiny"])
    params = {
        "PRESET": "tiny",
        "SEED": 0,
        "DATA_ROOT": str(report_dirs["data"]),
        "FIGURES_DIR": str(report_dirs["figures"]),
        "RESULTS_DIR": str(report_dirs["results"]),
    }
    executed = report_dirs["notebooks"] / notebook.name
    rl.report.execute(notebook, executed, params, cwd=notebook.parent)
    first = next(c for c in json.loads(executed.read_text())["cells"] if c["cell_type"] == "markdown")
    listing = "".join(first["source"])  # the parameters it ran with, in prose and one line each
    assert "It ran on the `tiny` preset with seed 0" in listing and '- `PRESET = "tiny"` (passed)' in listing
    assert f'- `DATA_ROOT = "{report_dirs["data"]}"` (passed)' in listing
    results = json.loads((report_dirs["results"] / f"{notebook.stem}.json").read_text())
    assert results["meta"]["preset"] == "tiny"
    figures = list(report_dirs["figures"].glob(f"{notebook.name[:2]}_*.png"))
    assert figures, f"{notebook.name} saved no figure"
    CHECKS[notebook.name[:2]](results)


def test_every_notebook_has_a_check_and_a_parameters_cell():
    import nbformat

    for path in NOTEBOOKS:
        assert path.name[:2] in CHECKS, f"{path.name} has no assertions in CHECKS"
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
        assert "SEED" in tagged[0].source and "PRESET" in tagged[0].source
        sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "import receiptlib as rl" in sources and "sys.path" not in sources and "import *" not in sources
        # the committed copy's first markdown cell lists the parameters its last run had, as the runner writes it
        doc = json.loads(path.read_text())
        first = next(c for c in nb.cells if c.cell_type == "markdown")
        listed = "".join(next(c for c in rl.report.describe_parameters(doc)["cells"] if c["cell_type"] == "markdown")["source"])
        assert rl.report.runner.PARAMETERS_BEGIN in first.source and first.source == listed, path.name
        assert all(f"- `{name} = " in first.source for name in re.findall(r"^(\w+) = ", tagged[0].source, re.M))
