"""The threshold tuners of notebook 04 (section VI): one that works in the page without a kernel, and the live
ipywidgets one with every per-class slider and the save button.

The paper set each class's threshold on the max logit to mean - k * std of its validation maxima and then
revised some by hand. Both tuners do that on validation outputs only, and every number they show comes from
`openset.tune`, the plain function the tests call.

`KernelFreeTuner` is a self-contained HTML output (report.tuner_page: inline script, no widget manager, no
network): it embeds `openset.tune_grid` (tune at every k of the slider) and `openset.threshold_presets`, so the
committed notebook and its HTML export (`jupyter nbconvert --to html`) keep a working k slider and presets. Widget state saved by
papermill would need ipywidgets' HTML manager from a CDN and still has no kernel behind its sliders, hence a
plain page. JupyterLab runs an output's script only in a trusted notebook (File > Trust Notebook); untrusted,
the output says so and the static figures above stand in.

`ThresholdTuner` needs a kernel: the k slider moves every threshold that has not been set by hand; a class
slider sets (overrides) that class's threshold; the presets set k; the save button writes the thresholds file.
While k is dragged the readout is the grid's (cheap, exact without overrides); the full recompute (overrides,
class sliders, confusion matrix) runs once the slider has settled.
"""
from __future__ import annotations

import asyncio
import base64
import html
import io
from pathlib import Path
from typing import Sequence

from . import openset
from .common import OTHER
from .report import plots
from .report.tuner_page import NO_SCRIPT, tuner_page

K_STEP = 0.1  # the k slider's step, and so the grid's: the kernel-free slider moves over grid points only
SETTLE_S = 0.3  # the live tuner recomputes fully once k has not moved for this long (a drag sends many values)
DIRECTION = "k: std below each class's mean max logit (higher k = lower thresholds = fewer photos called Other)"


def share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def readout_html(r: dict, k: float, *, note: str = "") -> str:
    """The live tuner's readout line (the kernel-free page shows the same fields): val macro-F1, Other F1
    (precision, recall), the share of known photos kept and of Other caught, at k. ``r`` is a `tune` result or a
    `tune_grid` entry."""
    kept, caught = openset.kept_and_caught(r["confusion"])
    return (f"<b>val</b> macro-F1: <span class='macro-f1'>{r['macro_f1']:.4f}</span> &nbsp; "
            f"Other F1: <span class='other-f1'>{r['other_f1']:.4f}</span> "
            f"(precision {r['other_precision']:.3f}, recall {r['other_recall']:.3f}) &nbsp; "
            f"known kept (TPR): {share(kept)}, Other caught: {share(caught)} &nbsp; k = {k:.1f}{note}")


class KernelFreeTuner:
    """The k slider and the threshold presets as one HTML output that needs no kernel.

    grid: `openset.tune_grid(val, ks, classes=known)`; presets: `openset.threshold_presets(grid)` (computed when
    None); classes: the known class names; k: where the slider starts (the grid point nearest it; default the
    max macro-F1 preset). Dragging shows the readout of the grid point under the handle; releasing it redraws the
    confusion counts too. Display it as a cell's last value (or with IPython's `display`).
    """

    def __init__(self, grid: list[dict], classes: Sequence[str], *, presets=None, k: float | None = None):
        if not grid:
            raise ValueError("KernelFreeTuner: empty grid; make one with rl.openset.tune_grid(val, classes=known)")
        self.grid = grid
        self.classes = [c for c in classes if c != OTHER]
        if len(grid[0]["confusion"]) != len(self.classes) + 1:
            raise ValueError(f"KernelFreeTuner: {len(self.classes)} class names for a grid of "
                             f"{len(grid[0]['confusion']) - 1} known classes")
        self.presets = list(openset.threshold_presets(grid) if presets is None else presets)
        best = next((p.k for p in self.presets if p.name == "macro_f1"), grid[0]["k"])
        self.start = nearest(grid, best if k is None else k)

    def data(self) -> dict:
        """What the page embeds: the classes (Other last), the grid, the presets and the start index."""
        return {"classes": [*self.classes, OTHER], "grid": self.grid, "start": self.start,
                "presets": [p.as_dict() for p in self.presets], "direction": DIRECTION}

    def html(self) -> str:
        return tuner_page(self.data())

    def _repr_mimebundle_(self, include=None, exclude=None):
        g = self.grid[self.start]
        return {"text/html": self.html(),
                "text/plain": f"kernel-free threshold tuner over k = {self.grid[0]['k']:g}..{self.grid[-1]['k']:g} "
                              f"(val macro-F1 {g['macro_f1']:.4f} at k = {g['k']:g}); {NO_SCRIPT}"}


def nearest(grid: list[dict], k: float) -> int:
    """The index of the grid point nearest k (the first of two equally near)."""
    return min(range(len(grid)), key=lambda i: (abs(grid[i]["k"] - k), i))


class ThresholdTuner:
    """Widgets over `openset.tune(val, k=..., overrides=...)`. Usable without a display (tests drive it).

    grid, presets: as `KernelFreeTuner`'s (computed over the k slider's values when None, so pass the notebook's
    to compute them once). Setting k from code (`set_k`, a preset) recomputes at once; a dragged k slider
    shows the grid's readout and recomputes once it settles (SETTLE_S), at once where no event loop runs.
    """

    def __init__(self, val, classes: Sequence[str], path: str | Path, *, k: float = openset.PAPER_K, run: str | None = None,
                 k_range: tuple[float, float] = (0.0, 6.0), grid: list[dict] | None = None, presets=None):
        import ipywidgets as w

        self.val = openset.as_outputs(val)
        self.classes = [c for c in classes if c != OTHER]
        self.path = Path(path)
        self.run = run
        self.overrides: dict[str, float] = {}
        self.grid = grid if grid is not None else openset.tune_grid(
            self.val, openset.k_grid(*k_range, step=K_STEP), classes=self.classes)
        self.presets = list(openset.threshold_presets(self.grid) if presets is None else presets)
        self.result = openset.tune(self.val, k=k, classes=self.classes)
        self._updating = False
        self._pending = None  # the scheduled full recompute while k is dragged

        # continuous: the kernel hears every value of a drag and answers from the grid (the cheap readout)
        self.k_slider = w.FloatSlider(value=k, min=k_range[0], max=k_range[1], step=K_STEP, description="k",
                                      continuous_update=True, readout_format=".1f")
        lo, hi = float(self.val.logits.max(axis=1).min()), float(self.val.logits.max(axis=1).max())
        self.class_sliders = {  # no grid for a class's own threshold: recomputed on release
            name: w.FloatSlider(value=self.result["thresholds"][name], min=lo, max=hi, step=(hi - lo) / 200,
                                description=name, continuous_update=False, readout_format=".2f",
                                style={"description_width": "90px"}, layout=w.Layout(width="420px"))
            for name in self.classes
        }
        self.preset_buttons = {
            p.name: w.Button(description=p.label + (" ⚠" if p.boundary else ""), tooltip=preset_note(p),
                             layout=w.Layout(width="auto"))
            for p in self.presets
        }
        self.readout = w.HTML()
        self.readout.add_class("receiptlib-tuner-readout")
        # A picture inside HTML, not an Output widget (a recompute that runs once a drag has settled has no cell to
        # print in) nor an Image widget (its binary buffer did not reach JupyterLab 4.6 through the server).
        self.confusion = w.HTML(self._confusion_html())
        self.save_button = w.Button(description="save thresholds", icon="save", button_style="primary")
        self.reset_button = w.Button(description="clear overrides")
        self.status = w.HTML()
        self.status.add_class("receiptlib-tuner-status")

        self.k_slider.observe(lambda change: self._on_k(change["new"]), names="value")
        for name, slider in self.class_sliders.items():
            slider.observe(lambda change, name=name: self._on_class(name, change["new"]), names="value")
        for name, button in self.preset_buttons.items():
            button.on_click(lambda _, name=name: self.apply_preset(name))
        self.save_button.on_click(lambda _: self.save())
        self.reset_button.on_click(lambda _: self.clear_overrides())
        self.widget = w.VBox([
            w.HBox([self.k_slider, self.save_button, self.reset_button]),
            w.HBox([w.Label("presets:"), *self.preset_buttons.values()]),
            self.readout, self.status,
            w.HBox([w.VBox(list(self.class_sliders.values()), layout=w.Layout(height="360px", overflow="auto")),
                    self.confusion]),
        ])
        self._refresh(draw=False)  # the picture above is of this result already

    # -- the logic, callable without a browser ------------------------------------------------------
    @property
    def k(self) -> float:
        return float(self.k_slider.value)

    def set_k(self, k: float) -> dict:
        """Move k and recompute at once."""
        self._cancel_pending()
        if self.k_slider.value != k:
            self._updating = True  # the observer's cheap path is for drags, not for this
            try:
                self.k_slider.value = k
            finally:
                self._updating = False
        return self._refresh()

    def apply_preset(self, name: str) -> dict:
        """Set k to a threshold preset's (`openset.threshold_presets`) and say where it lands."""
        point = next((p for p in self.presets if p.name == name), None)
        if point is None:
            raise KeyError(f"unknown preset {name!r}; presets: {', '.join(p.name for p in self.presets)}")
        result = self.set_k(point.k)
        self.status.value = html.escape(preset_note(point))
        return result

    def set_override(self, name: str, threshold: float) -> dict:
        if name not in self.class_sliders:
            raise KeyError(f"unknown class {name!r}; classes: {', '.join(self.classes)}")
        self.overrides[name] = float(threshold)
        return self._refresh()

    def clear_overrides(self) -> dict:
        self.overrides.clear()
        return self._refresh()

    def save(self) -> Path:
        if self._pending is not None:  # saved as shown: a k still settling is recomputed first
            self._cancel_pending()
            self._refresh()
        openset.save_thresholds(self.path, self.result["detector"], classes=self.classes, run=self.run)
        self.status.value = f"saved {self.path.name}: k={self.k:.1f}, {len(self.overrides)} overrides"
        return self.path

    # -- plumbing ------------------------------------------------------------------------------------
    def _on_k(self, k: float):
        if self._updating:
            return
        g = self.grid[nearest(self.grid, k)]
        exact = abs(g["k"] - k) < 1e-9 and not self.overrides
        self.readout.value = readout_html(g, k, note="" if exact else " <i>(grid point without your overrides; "
                                                                     "recomputing when the slider settles)</i>")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script, a test): nothing to wait for
            self._refresh()
            return
        self._cancel_pending()
        self._pending = loop.call_later(SETTLE_S, self._settled)

    def _settled(self):
        self._pending = None
        self._refresh()

    def _cancel_pending(self):
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _on_class(self, name: str, value: float):
        if not self._updating:
            self.set_override(name, value)

    def _refresh(self, *, draw: bool = True) -> dict:
        self.result = openset.tune(self.val, k=self.k, overrides=dict(self.overrides), classes=self.classes)
        self._updating = True  # moving sliders to the new thresholds is not the user overriding them
        try:
            for name, slider in self.class_sliders.items():
                slider.value = min(max(self.result["thresholds"][name], slider.min), slider.max)
                slider.style.handle_color = "#dd8452" if name in self.overrides else None
        finally:
            self._updating = False
        self.readout.value = readout_html(self.result, self.k, note=f", overrides: {len(self.overrides)}")
        if draw:
            self._draw_confusion()
        return self.result

    def _confusion_html(self) -> str:
        from matplotlib.figure import Figure  # not pyplot: the inline backend would show it under the cell

        fig = Figure(figsize=(5.5, 5))
        title = f"val confusion at k = {self.k:.1f}, {len(self.overrides)} overrides (share of each true label)"
        plots.confusion(self.result["confusion"], [*self.classes, OTHER], ax=fig.subplots(), title=title)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        png = base64.b64encode(buffer.getvalue()).decode()
        # the title in words too: what the picture shows (and what the browser test reads)
        return (f"<img class='receiptlib-tuner-confusion' width='500' alt='{html.escape(title)}' "
                f"title='{html.escape(title)}' src='data:image/png;base64,{png}'>")

    def _draw_confusion(self):
        self.confusion.value = self._confusion_html()


def preset_note(point) -> str:
    """Where a preset lands on val, in a line, with its boundary warning."""
    text = (f"{point.label}: k = {point.k:g}, known kept (TPR) {share(point.known_kept)}, Other caught "
            f"{share(point.other_caught)}, val macro-F1 {point.macro_f1:.4f}")
    return text + (f". Warning: {point.warning}" if point.warning else "")
