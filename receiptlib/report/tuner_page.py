"""The kernel-free tuner's page (`tuner.KernelFreeTuner`): one HTML output, its data embedded, built by its own
inline script (no widget manager, no network), so a page that runs no script shows only its note.

The script reads the embedded data: classes (Other last), the grid (`openset.tune_grid`), the presets
(`openset.threshold_presets`), the start index and the k axis's words. Slider `input` events (a drag) update the
readout and the curve's marker from the grid point under the handle; `change` (release, keyboard) and a preset
redraw the confusion counts too. Each readout field keeps its exact value in `data-value`, each confusion cell its
count in `data-count` (tests/test_browser.py reads them).
"""
from __future__ import annotations

import hashlib
import html
import json

NO_SCRIPT = ("This tuner runs in the page's own script, without a kernel: open the notebook's HTML export "
             "(jupyter nbconvert --to html), or trust the notebook in JupyterLab (File > Trust Notebook); "
             "with a kernel, the live tuner below has every per-class slider.")

PAGE = r"""<div class="receiptlib-kernel-free-tuner" id="__ID__">
<style>
#__ID__ { font: 13px/1.4 sans-serif; }
#__ID__ .rl-row { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; margin: 4px 0; }
#__ID__ .rl-k { width: 320px; }
#__ID__ .rl-preset { font-size: 12px; padding: 2px 8px; cursor: pointer; }
#__ID__ .rl-preset.rl-active { background: #4c72b0; color: white; }
#__ID__ .rl-warning { color: #c44e52; }
#__ID__ .rl-state { color: #777; font-style: italic; }
#__ID__ table.rl-confusion { border-collapse: collapse; font-size: 10px; margin-top: 4px; }
#__ID__ table.rl-confusion td, #__ID__ table.rl-confusion th { border: 1px solid #ddd; min-width: 18px;
  padding: 1px 2px; text-align: right; }
#__ID__ table.rl-confusion th.rl-col { writing-mode: vertical-rl; transform: rotate(180deg); font-weight: normal; }
#__ID__ .rl-caption { font-size: 12px; margin-top: 6px; }
</style>
<p class="rl-note">__NOTE__</p>
</div>
<script>
(function () {
  var root = document.getElementById("__ID__");
  if (!root || root.getAttribute("data-ready")) { return; }  // a script run twice builds once
  root.setAttribute("data-ready", "1");
  var data = __DATA__;
  var grid = data.grid, classes = data.classes, C = classes.length - 1, SVG = "http://www.w3.org/2000/svg";
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (a) { e.setAttribute(a, attrs[a]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function share(x) { return x === null ? "n/a" : (100 * x).toFixed(1) + "%"; }
  root.removeChild(root.querySelector(".rl-note"));
  root.appendChild(el("div", "", "Threshold tuner on val, in this page (no kernel): every value is the library's "
    + "tune() precomputed at k = " + grid[0].k + " to " + grid[grid.length - 1].k + ". Drag k, or pick a preset."));

  var row = el("div", "rl-row"), slider = el("input", "rl-k"), kText = el("b", "rl-k-value");
  slider.type = "range"; slider.min = 0; slider.max = grid.length - 1; slider.step = 1; slider.value = data.start;
  slider.setAttribute("aria-label", "k");
  row.appendChild(el("span", "", "k")); row.appendChild(slider); row.appendChild(kText);
  root.appendChild(row);

  var presets = el("div", "rl-row rl-presets"), note = el("div", "rl-preset-note"), buttons = [];
  presets.appendChild(el("span", "", "presets:"));
  data.presets.forEach(function (p) {
    var b = el("button", "rl-preset", p.label + (p.boundary ? " \u26a0" : ""));
    b.type = "button"; b.setAttribute("data-preset", p.name);
    b.addEventListener("click", function () { slider.value = p.index; full(p.index, p); });
    buttons.push(b); presets.appendChild(b);
  });
  root.appendChild(presets); root.appendChild(note);

  var readout = el("div", "rl-readout"), fields = {};
  [["val macro-F1 ", "macro_f1", 4], [" \u00b7 Other F1 ", "other_f1", 4], [" (precision ", "other_precision", 3],
   [", recall ", "other_recall", 3], [") \u00b7 known kept (TPR) ", "known_kept", 0],
   [" \u00b7 Other caught ", "other_caught", 0]].forEach(function (f) {
    readout.appendChild(document.createTextNode(f[0]));
    fields[f[1]] = readout.appendChild(el("span", f[1].replace(/_/g, "-")));
    fields[f[1]].digits = f[2];
  });
  readout.appendChild(document.createTextNode(" \u00b7 k = "));
  fields.k = readout.appendChild(el("span", "k"));
  var state = readout.appendChild(el("span", "rl-state"));
  root.appendChild(readout);

  // macro-F1 and Other F1 against k, the presets marked where they land, a line at the slider's k
  var W = 560, H = 230, L = 44, R = 12, T = 24, B = 44, k0 = grid[0].k, k1 = grid[grid.length - 1].k;
  function x(k) { return L + (k1 > k0 ? (k - k0) / (k1 - k0) : 0.5) * (W - L - R); }
  function y(f) { return T + (1 - f) * (H - T - B); }
  var plot = svg("svg", {width: W, height: H, "class": "rl-curve", role: "img"});
  plot.appendChild(svg("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#ccc"}));
  [0, 0.5, 1].forEach(function (f) {
    plot.appendChild(svg("text", {x: L - 4, y: y(f) + 4, "text-anchor": "end", "font-size": 10}, f.toFixed(1)));
  });
  for (var t = Math.ceil(k0); t <= k1; t++) {
    plot.appendChild(svg("text", {x: x(t), y: H - B + 13, "text-anchor": "middle", "font-size": 10}, String(t)));
  }
  plot.appendChild(svg("text", {x: L, y: H - 6, "font-size": 10}, data.direction));
  plot.appendChild(svg("text", {x: 10, y: T + (H - T - B) / 2, "font-size": 10, "text-anchor": "middle",
    transform: "rotate(-90 10 " + (T + (H - T - B) / 2) + ")"}, "F1 on val (0 to 1)"));
  [["macro_f1", "#4c72b0", "macro-F1"], ["other_f1", "#dd8452", "Other F1"]].forEach(function (s, j) {
    plot.appendChild(svg("polyline", {fill: "none", stroke: s[1], "stroke-width": 1.5,
      points: grid.map(function (g) { return x(g.k) + "," + y(g[s[0]]); }).join(" ")}));
    plot.appendChild(svg("text", {x: L + 80 * j, y: 14, "font-size": 10, fill: s[1]}, "\u2014 " + s[2]));
  });
  data.presets.forEach(function (p, j) {  // a dot on the macro-F1 curve, its label stacked at the bottom
    var cx = x(p.k), cy = y(p.macro_f1), ly = H - B - 6 - 11 * j, colour = p.boundary ? "#c44e52" : "#333";
    plot.appendChild(svg("line", {x1: cx, x2: cx, y1: cy, y2: ly, stroke: colour, "stroke-dasharray": "1,2"}));
    plot.appendChild(svg("circle", {cx: cx, cy: cy, r: 3.5, fill: colour}));
    plot.appendChild(svg("text", {x: cx + (cx < W / 2 ? 3 : -3), y: ly, "font-size": 9, fill: colour,
      "text-anchor": cx < W / 2 ? "start" : "end"}, p.label + (p.boundary ? " \u26a0" : "")));
  });
  var marker = plot.appendChild(svg("line", {y1: T, y2: H - B, stroke: "black", "stroke-dasharray": "3,2"}));
  root.appendChild(plot);

  var caption = root.appendChild(el("div", "rl-caption")), table = root.appendChild(el("table", "rl-confusion"));
  function drawConfusion(i) {
    var m = grid[i].confusion;
    while (table.rows.length) { table.deleteRow(0); }
    caption.textContent = "val confusion at k = " + grid[i].k + " (counts; rows: true chain, columns: predicted; "
      + "shade: share of the row)";
    var head = table.insertRow(); head.appendChild(el("th", "", "true \\ predicted"));
    classes.forEach(function (c) { head.appendChild(el("th", "rl-col", c)); });
    m.forEach(function (counts, r) {
      var tr = table.insertRow(), total = counts.reduce(function (a, b) { return a + b; }, 0);
      tr.appendChild(el("th", "", classes[r]));
      counts.forEach(function (n, c) {
        var td = el("td", "rl-count", n ? String(n) : "");
        td.setAttribute("data-count", n);
        td.title = "true " + classes[r] + ", predicted " + classes[c] + ": " + n;
        var a = total ? n / total : 0;
        td.style.background = "rgba(76, 114, 176, " + a.toFixed(3) + ")";
        if (a > 0.6) { td.style.color = "white"; }
        tr.appendChild(td);
      });
    });
    table.setAttribute("data-k", grid[i].k);
  }

  function cheap(i) {  // while dragging: the numbers of the grid point under the handle
    var g = grid[i];
    Object.keys(fields).forEach(function (f) {
      var v = g[f];
      fields[f].textContent = f === "k" ? String(v) : (fields[f].digits ? v.toFixed(fields[f].digits) : share(v));
      fields[f].setAttribute("data-value", v === null ? "" : String(v));
    });
    kText.textContent = "k = " + g.k;
    marker.setAttribute("x1", x(g.k)); marker.setAttribute("x2", x(g.k));
    state.textContent = " (dragging: confusion below still at k = " + table.getAttribute("data-k") + ")";
  }
  function full(i, preset) {  // on release, or a preset: the confusion counts too
    cheap(i); drawConfusion(i); state.textContent = "";
    buttons.forEach(function (b) { b.classList.toggle("rl-active", !!preset && b.getAttribute("data-preset") === preset.name); });
    note.textContent = ""; note.className = "rl-preset-note";
    if (preset) {
      note.textContent = preset.label + ": k = " + preset.k + ", known kept (TPR) " + share(preset.known_kept)
        + ", Other caught " + share(preset.other_caught) + ", val macro-F1 " + preset.macro_f1.toFixed(4)
        + (preset.warning ? ". Warning: " + preset.warning : "");
      if (preset.warning) { note.className += " rl-warning"; }
    }
  }
  slider.addEventListener("input", function () { cheap(Number(slider.value)); });
  slider.addEventListener("change", function () { full(Number(slider.value)); });
  full(data.start);
})();
</script>"""


def tuner_page(data: dict) -> str:
    """The page for ``data`` (see the module's docstring). Its element id is a hash of the data: the same data
    gives the same notebook bytes on every run."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    element = "receiptlib-tuner-" + hashlib.sha1(text.encode()).hexdigest()[:12]
    # "</" escaped: a class name cannot end the script early
    return (PAGE.replace("__ID__", element).replace("__DATA__", text.replace("</", "<\\/"))
            .replace("__NOTE__", html.escape(NO_SCRIPT)))
