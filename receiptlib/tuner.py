"""The interactive threshold tuner of notebook 04 (section VI): sliders for k and for each class's threshold.

The paper set each class's threshold on the max logit to mean - k * std of its validation maxima and then
revised some by hand. This tuner does that on validation outputs only: the k slider moves every threshold
that has not been set by hand; a class slider sets (overrides) that class's threshold. The readout shows
macro-F1, Other F1 and the confusion matrix, all from `openset.tune`, the plain function the tests call;
the save button writes the thresholds file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import openset
from .common import OTHER
from .report import plots


class ThresholdTuner:
    """Widgets over `openset.tune(val, k=..., overrides=...)`. Usable without a display (tests drive it)."""

    def __init__(self, val, classes: Sequence[str], path: str | Path, *, k: float = 2.0, run: str | None = None,
                 k_range: tuple[float, float] = (0.0, 6.0)):
        import ipywidgets as w

        self.val = openset.as_outputs(val)
        self.classes = [c for c in classes if c != OTHER]
        self.path = Path(path)
        self.run = run
        self.overrides: dict[str, float] = {}
        self.result = openset.tune(self.val, k=k, classes=self.classes)
        self._updating = False

        self.k_slider = w.FloatSlider(value=k, min=k_range[0], max=k_range[1], step=0.1, description="k",
                                      continuous_update=False, readout_format=".1f")
        lo, hi = float(self.val.logits.max(axis=1).min()), float(self.val.logits.max(axis=1).max())
        self.class_sliders = {
            name: w.FloatSlider(value=self.result["thresholds"][name], min=lo, max=hi, step=(hi - lo) / 200,
                                description=name, continuous_update=False, readout_format=".2f",
                                style={"description_width": "90px"}, layout=w.Layout(width="420px"))
            for name in self.classes
        }
        self.readout = w.HTML()
        self.readout.add_class("receiptlib-tuner-readout")
        self.confusion = w.Output()
        self.save_button = w.Button(description="save thresholds", icon="save", button_style="primary")
        self.reset_button = w.Button(description="clear overrides")
        self.status = w.HTML()
        self.status.add_class("receiptlib-tuner-status")

        self.k_slider.observe(lambda change: self.set_k(change["new"]), names="value")
        for name, slider in self.class_sliders.items():
            slider.observe(lambda change, name=name: self._on_class(name, change["new"]), names="value")
        self.save_button.on_click(lambda _: self.save())
        self.reset_button.on_click(lambda _: self.clear_overrides())
        self.widget = w.VBox([
            w.HBox([self.k_slider, self.save_button, self.reset_button]),
            self.readout, self.status,
            w.HBox([w.VBox(list(self.class_sliders.values()), layout=w.Layout(height="360px", overflow_y="auto")),
                    self.confusion]),
        ])
        self._refresh()

    # -- the logic, callable without a browser ------------------------------------------------------
    @property
    def k(self) -> float:
        return float(self.k_slider.value)

    def set_k(self, k: float) -> dict:
        if self.k_slider.value != k:
            self.k_slider.value = k  # re-enters through the observer
            return self.result
        return self._refresh()

    def set_override(self, name: str, threshold: float) -> dict:
        if name not in self.class_sliders:
            raise KeyError(f"unknown class {name!r}; classes: {', '.join(self.classes)}")
        self.overrides[name] = float(threshold)
        return self._refresh()

    def clear_overrides(self) -> dict:
        self.overrides.clear()
        return self._refresh()

    def save(self) -> Path:
        openset.save_thresholds(self.path, self.result["detector"], classes=self.classes, run=self.run)
        self.status.value = f"saved {self.path.name}: k={self.k:.1f}, {len(self.overrides)} overrides"
        return self.path

    # -- plumbing ------------------------------------------------------------------------------------
    def _on_class(self, name: str, value: float):
        if not self._updating:
            self.set_override(name, value)

    def _refresh(self) -> dict:
        self.result = openset.tune(self.val, k=self.k, overrides=dict(self.overrides), classes=self.classes)
        self._updating = True  # moving sliders to the new thresholds is not the user overriding them
        try:
            for name, slider in self.class_sliders.items():
                slider.value = min(max(self.result["thresholds"][name], slider.min), slider.max)
                slider.style.handle_color = "#dd8452" if name in self.overrides else None
        finally:
            self._updating = False
        r = self.result
        self.readout.value = (f"<b>val</b> macro-F1: <span class='macro-f1'>{r['macro_f1']:.4f}</span> &nbsp; "
                              f"Other F1: <span class='other-f1'>{r['other_f1']:.4f}</span> "
                              f"(precision {r['other_precision']:.3f}, recall {r['other_recall']:.3f}) &nbsp; "
                              f"k = {self.k:.1f}, overrides: {len(self.overrides)}")
        self._draw_confusion()
        return r

    def _draw_confusion(self):
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.confusion.clear_output(wait=True)
        with self.confusion:
            fig, ax = plt.subplots(figsize=(5.5, 5))
            plots.confusion(self.result["confusion"], [*self.classes, OTHER], ax=ax, title="val confusion")
            display(fig)
            plt.close(fig)
