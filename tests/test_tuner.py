import numpy as np

from receiptlib import openset
from receiptlib.tuner import ThresholdTuner


def outputs(seed=0, n_known=3, per_class=30, n_other=40):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.repeat(np.arange(n_known), per_class), np.full(n_other, n_known)])
    logits = rng.normal(0, 1, (len(labels), n_known))
    for c in range(n_known):
        logits[labels == c, c] += 4 + 2 * c  # classes differ in their typical max logit
    return openset.Outputs(logits=logits, labels=labels)


def test_sliders_drive_the_same_function_the_notebook_reports(tmp_path):
    val, classes = outputs(), ["A", "B", "C"]
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
