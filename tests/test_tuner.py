import asyncio
import json
import re

import numpy as np
import pytest

from receiptlib import openset, tuner as rtuner
from receiptlib.tuner import KernelFreeTuner, ThresholdTuner

CLASSES = ["A", "B", "C"]


def outputs(seed=0, n_known=3, per_class=30, n_other=40):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.repeat(np.arange(n_known), per_class), np.full(n_other, n_known)])
    logits = rng.normal(0, 1, (len(labels), n_known))
    for c in range(n_known):
        logits[labels == c, c] += 4 + 2 * c  # classes differ in their typical max logit
    return openset.Outputs(logits=logits, labels=labels)


def embedded(page: str) -> dict:
    """The data a kernel-free tuner's page carries, read back from its HTML as the browser's script does."""
    match = re.search(r"var data = (\{.*?\});\n", page, re.S)
    assert match, "no embedded data in the page"
    return json.loads(match.group(1).replace("<\\/", "</"))


def known_kept_by_predict(val, k):
    """The share of known val photos kept, straight from the detector's predictions (not from tune's counts)."""
    pred = openset.PerClassLogit(k, classes=CLASSES).fit(val).predict(val)
    known = val.labels < len(CLASSES)
    return float((pred[known] != len(CLASSES)).mean())


def test_sliders_drive_the_same_function_the_notebook_reports(tmp_path):
    val, classes = outputs(), CLASSES
    tuner = ThresholdTuner(val, classes, tmp_path / "t.json", k=2.0)
    tuner.k_slider.value = 1.0  # what a user's drag does
    expected = openset.tune(val, k=1.0, classes=classes)
    assert tuner.result["macro_f1"] == expected["macro_f1"]
    assert f"{expected['macro_f1']:.4f}" in tuner.readout.value

    tuner.class_sliders["C"].value = 3.0  # a hand-set threshold is kept when k moves
    tuner.k_slider.value = 2.5
    assert tuner.result["thresholds"]["C"] == 3.0
    assert tuner.result["macro_f1"] == openset.tune(val, k=2.5, overrides={"C": 3.0}, classes=classes)["macro_f1"]
    assert tuner.class_sliders["A"].value == tuner.result["thresholds"]["A"]

    path = tuner.save()
    loaded = openset.load_thresholds(path, classes=classes)
    assert np.allclose(loaded.thresholds_, [tuner.result["thresholds"][c] for c in classes])
    tuner.clear_overrides()
    assert tuner.result["thresholds"]["C"] != 3.0


def test_kernel_free_grid_equals_tune_at_every_grid_point():
    val = outputs()
    ks = openset.k_grid(0.0, 6.0, 0.1)
    shown = ["A", "B</script><b>", "C"]  # a chain name that would end the page's script if pasted raw
    page = KernelFreeTuner(openset.tune_grid(val, ks, classes=CLASSES), shown, k=2.0).html()
    data = embedded(page)
    assert [g["k"] for g in data["grid"]] == ks and ks[3] == 0.3  # the decimals the slider shows
    assert data["classes"] == [*shown, "Other"] and data["grid"][data["start"]]["k"] == 2.0
    for g in data["grid"]:
        expected = openset.tune(val, k=g["k"], classes=CLASSES)
        for key in ("macro_f1", "other_f1", "other_precision", "other_recall", "confusion"):
            assert g[key] == expected[key], (g["k"], key)
        assert g["known_kept"] == pytest.approx(known_kept_by_predict(val, g["k"]), abs=1e-12)
        other = val.labels == len(CLASSES)
        assert g["other_caught"] == pytest.approx(expected["other_recall"]) and other.any()
    assert {p["name"] for p in data["presets"]} == {"tpr95", "youden", "macro_f1", "reject_rate"}
    assert page.count("</script>") == 1


def test_threshold_presets_follow_their_rules_and_flag_the_grid_edge():
    val = outputs()
    grid = openset.tune_grid(val, openset.k_grid(0.0, 6.0, 0.1), classes=CLASSES)
    points = {p.name: p for p in openset.threshold_presets(grid, tpr=0.95, reject_rate=0.02)}
    kept = [known_kept_by_predict(val, g["k"]) for g in grid]
    assert points["tpr95"].k == grid[min(i for i, v in enumerate(kept) if v >= 0.95)]["k"]
    assert points["reject_rate"].k == grid[min(i for i, v in enumerate(kept) if v >= 0.98)]["k"]
    assert points["reject_rate"].k >= points["tpr95"].k  # rejecting fewer known photos needs a lower threshold
    youden = [g["known_kept"] + g["other_caught"] - 1 for g in grid]
    assert points["youden"].k == grid[int(np.argmax(youden))]["k"]
    assert points["macro_f1"].macro_f1 == max(g["macro_f1"] for g in grid)
    assert not any(p.boundary for p in points.values())  # this grid holds every answer

    # A grid that stops short: no k keeps 95% (a pick at the edge, flagged), and the best macro-F1 sits on the edge.
    short = openset.tune_grid(val, [0.0, 0.1, 0.2], classes=CLASSES)
    assert max(g["known_kept"] for g in short) < 0.95
    cut = {p.name: p for p in openset.threshold_presets(short)}
    assert cut["tpr95"].k == 0.2 and cut["tpr95"].boundary and "widen the grid" in cut["tpr95"].warning
    assert cut["macro_f1"].k == 0.2 and cut["macro_f1"].boundary and "highest k" in cut["macro_f1"].warning
    assert cut["macro_f1"].as_dict()["boundary"] is True


def test_live_tuner_presets_set_k_and_say_where_they_land(tmp_path):
    val = outputs()
    tuner = ThresholdTuner(val, CLASSES, tmp_path / "t.json", k=0.0)
    point = next(p for p in tuner.presets if p.name == "tpr95")
    tuner.apply_preset("tpr95")
    assert tuner.k == point.k and tuner.result["macro_f1"] == openset.tune(val, k=point.k, classes=CLASSES)["macro_f1"]
    assert point.label in tuner.status.value and f"{point.known_kept:.1%}" in tuner.status.value
    with pytest.raises(KeyError, match="unknown preset"):
        tuner.apply_preset("nope")


def test_a_dragged_k_reads_the_grid_and_recomputes_once_it_settles(tmp_path, monkeypatch):
    val = outputs()
    tuner = ThresholdTuner(val, CLASSES, tmp_path / "t.json", k=2.0)
    calls = []
    real_tune = openset.tune
    monkeypatch.setattr(openset, "tune", lambda *a, **kw: calls.append(kw["k"]) or real_tune(*a, **kw))

    async def drag():
        for k in (2.1, 2.2, 2.3, 2.4):  # what a drag sends with continuous_update=True
            tuner.k_slider.value = k
            expected = real_tune(val, k=k, classes=CLASSES)
            assert f"{expected['macro_f1']:.4f}" in tuner.readout.value  # the grid's readout at once
            await asyncio.sleep(rtuner.SETTLE_S / 10)
        assert calls == [] and "k = 2.0," in tuner.confusion.value  # nothing recomputed or redrawn mid-drag
        await asyncio.sleep(rtuner.SETTLE_S * 2)
        assert calls == [2.4]  # one full recompute, at the value the slider settled on
        assert "k = 2.4," in tuner.confusion.value and "src='data:image/png;base64," in tuner.confusion.value

    asyncio.run(drag())
    assert tuner.result["macro_f1"] == real_tune(val, k=2.4, classes=CLASSES)["macro_f1"]
    assert "overrides: 0" in tuner.readout.value  # the full readout replaced the cheap one
