"""The threshold tuners of notebook 04 in a real browser, headless Chromium driven by Playwright:

- the live tuner: JupyterLab on a loopback port, Run All, move the k slider, check the readout against
  `openset.tune`, press save and check the thresholds file;
- the kernel-free tuner: the executed notebook's HTML export opened from disk with no kernel and no network,
  drag its k slider (the readout follows the handle, the confusion counts follow on release), pick a preset,
  and check every shown number against `openset.tune` at that grid point.

Needs Debian's Chromium (/usr/bin/chromium) and the Playwright Python package; Playwright's own browser
download is never used. Without them the tests are skipped locally; with RECEIPTLIB_REQUIRE_BROWSER=1 (CI,
`.ci/run`) they fail instead. Screenshots before and after are kept in test-artifacts/browser/
(jupyterlab_*.png, kernel_free_*.png).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest

import receiptlib as rl
from test_tuner import embedded

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "04_thresholds.ipynb"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; a Playwright browser download is impossible here
ARTIFACTS = ROOT / "test-artifacts" / "browser"
REQUIRE = os.environ.get("RECEIPTLIB_REQUIRE_BROWSER") == "1"
# Flags that matter on a CI box: running as root (no sandbox), no GPU, a closed network (no QUIC, no
# background fetches, component updates or sync). Playwright adds --headless itself.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Bounded waits (ms): generous because the machine may be shared with trainings.
SERVER_START_S = 120
KERNEL_MS = 120_000
RUN_ALL_MS = 300_000
UPDATE_MS = 60_000


def missing_requirements() -> list[str]:
    missing = []
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"Chromium at {CHROMIUM} (as root: `apt-get install -y --no-install-recommends chromium`)")
    if find_spec("playwright") is None:
        missing.append("the Playwright package (`pip install -e '.[dev]'` or `pip install playwright`; "
                       "do not run `playwright install`, Debian's Chromium is used)")
    for module, package in (("jupyterlab", "jupyterlab"), ("ipywidgets", "ipywidgets"),
                            ("jupyterlab_widgets", "jupyterlab_widgets"), ("nbconvert", "nbconvert")):
        if find_spec(module) is None:
            missing.append(f"{package} (`pip install -e '.[notebooks]'`)")
    return missing


@pytest.fixture
def browser_requirements():
    """Skip (locally) or fail (RECEIPTLIB_REQUIRE_BROWSER=1, as in CI) when the browser stack is missing."""
    missing = missing_requirements()
    if missing:
        message = "browser test needs " + "; ".join(missing)
        if REQUIRE:
            pytest.fail(message + " (RECEIPTLIB_REQUIRE_BROWSER=1: a missing browser is a failure)")
        pytest.skip(message)
    from importlib.metadata import version

    # ipywidgets 8 renders in JupyterLab only with jupyterlab_widgets 3 beside it ("Error displaying widget").
    assert version("ipywidgets").split(".")[0] == "8" and version("jupyterlab_widgets").split(".")[0] == "3", \
        f"ipywidgets {version('ipywidgets')} needs jupyterlab_widgets 3, found {version('jupyterlab_widgets')}"


@pytest.fixture
def tiny_run(browser_requirements, report_dirs, one_thread):
    """The tiny data and tiny run (shared with test_notebooks through report_dirs), made before the browser
    opens the notebook, so the kernel only reuses them and never trains."""
    nb = rl.report.Notebook("04_thresholds", preset="tiny", seed=0, data_root=report_dirs["data"])
    run = nb.run()
    run.outputs("val")  # cached on disk now, read by the kernel
    return run


@pytest.fixture
def lab_dir(tiny_run, report_dirs, tmp_path):
    """JupyterLab's root folder with a parameterised copy of notebook 04 (tiny preset, outputs cleared)."""
    import nbformat
    import papermill

    root = tmp_path / "lab"
    root.mkdir()
    params = {
        "PRESET": "tiny",
        "SEED": 0,
        "DATA_ROOT": str(report_dirs["data"]),
        "FIGURES_DIR": str(tmp_path / "figures"),
        "RESULTS_DIR": str(tmp_path / "results"),
        "THRESHOLDS_FILE": str(tmp_path / "thresholds.json"),
    }
    copy = root / NOTEBOOK.name
    papermill.execute_notebook(str(NOTEBOOK), str(copy), parameters=params, prepare_only=True,
                               kernel_name="python3", progress_bar=False, log_output=False)
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:  # a fresh notebook as a reader opens it: no stale outputs or saved widget state
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    nbformat.write(nb, copy)
    return root


def fresh_screenshots(prefix: str) -> dict[str, Path]:
    """This test's screenshot paths (before, after, failure), with its previous run's removed."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = {name: ARTIFACTS / f"{prefix}_{name}.png" for name in ("before", "after", "failure")}
    for path in shots.values():
        path.unlink(missing_ok=True)
    return shots


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    with opener.open(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def jupyterlab(lab_dir, tmp_path):
    """A JupyterLab server on 127.0.0.1 with a token, isolated from the user's Jupyter config, settings,
    workspaces and kernels; always terminated (kernels included) at the end."""
    port, token = free_port(), secrets.token_hex(16)
    home = tmp_path / "jupyter"
    settings = home / "lab-settings"
    # Every cell stays in the DOM (no virtual scrolling), and no news prompt covers the page.
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),  # so the venv's kernelspecs come first, not ~/.local's
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        # the kernel inherits these: inline figures as for a reader, no progress bars, one thread per library
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "RECEIPTLIB_PROGRESS": "0",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    log_path = tmp_path / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={lab_dir}", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root; the server refuses otherwise
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=lab_dir,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                http_get(f"{base}/api/status?token={token}")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer within {SERVER_START_S} s:\n"
                                       f"{log_path.read_text()[-3000:]}") from None
                time.sleep(0.5)  # polling the server, not an assertion
        yield {"base": base, "token": token, "log": log_path, "get": lambda p: http_get(f"{base}{p}?token={token}")}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def kernel_command(kernel_id: str) -> list[str]:
    """The command line of the kernel process started for `kernel_id` (found by its connection file)."""
    connection = f"kernel-{kernel_id}.json"
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = proc.joinpath("cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if any(arg.endswith(connection) for arg in argv):
            return argv
    raise AssertionError(f"no process runs kernel {kernel_id} (connection file {connection})")


@pytest.fixture
def page(jupyterlab, tmp_path):
    """A fresh headless Chromium page (new profile in tmp_path)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1500, "height": 1000})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.console_errors = []  # printed when a test fails
            page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: page.console_errors.append(str(error)))
            yield page
        finally:
            context.close()


@pytest.mark.slow
@pytest.mark.browser
def test_tuner_in_jupyterlab(tiny_run, jupyterlab, page, tmp_path):
    from playwright.sync_api import expect

    start = time.monotonic()
    shots = fresh_screenshots("jupyterlab")
    known = tiny_run.classes[:-1]  # as the notebook passes them to the tuner
    val = rl.openset.Outputs.from_run(tiny_run, "val")
    thresholds_file = tmp_path / "thresholds.json"
    try:
        page.goto(f"{jupyterlab['base']}/lab/tree/{NOTEBOOK.name}?token={jupyterlab['token']}")
        notebook = page.locator(".jp-NotebookPanel .jp-Notebook")
        expect(notebook).to_be_visible(timeout=KERNEL_MS)
        # The kernel JupyterLab picked: "python3" from the venv (or ipykernel's own spec, same interpreter).
        statusbar = page.locator("#jp-main-statusbar")
        expect(statusbar).to_contain_text(re.compile(r"Python 3 \(ipykernel\) \| Idle"), timeout=KERNEL_MS)
        sessions = jupyterlab["get"]("/api/sessions")
        assert [s["kernel"]["name"] for s in sessions] == ["python3"], sessions
        assert kernel_command(sessions[0]["kernel"]["id"])[0] == sys.executable  # the project's venv

        # Run > Run All Cells, then wait for the last code cell to have its execution count (or an error).
        page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        last_prompt = notebook.locator(".jp-CodeCell").last.locator(".jp-InputPrompt")
        error = notebook.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]',
                                 has_text="Traceback")  # how JupyterLab renders an exception
        expect(last_prompt.filter(has_text=re.compile(r"\[\d+\]")).or_(error.first)).to_be_visible(
            timeout=RUN_ALL_MS)
        assert error.count() == 0, f"a cell failed in the browser:\n{error.first.inner_text()}"
        expect(statusbar).to_contain_text(re.compile(r"\| Idle"), timeout=KERNEL_MS)
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)

        tuner = notebook.locator(".jp-OutputArea-output").filter(has=page.locator(".receiptlib-tuner-readout"))
        expect(tuner).to_have_count(1)
        readout = tuner.locator(".receiptlib-tuner-readout")
        status = tuner.locator(".receiptlib-tuner-status")
        k_slider = tuner.locator(".widget-hslider").filter(
            has=page.locator("label.widget-label", has_text=re.compile(r"^k$")))
        handle = k_slider.locator(".noUi-handle")
        expect(handle).to_have_count(1)
        expect(status).to_contain_text("saved thresholds.json")  # the notebook's own save cell ran
        before_k = float(handle.get_attribute("aria-valuenow"))
        before_text = readout.locator("span.macro-f1").inner_text()
        assert before_text == f"{rl.openset.tune(val, k=before_k, classes=known)['macro_f1']:.4f}"
        expect(readout).to_contain_text(f"k = {before_k:.1f}")

        # A k a few slider steps away where the library's macro-F1 differs at the readout's precision.
        # (The slider's step is 0.1: tuner.py's k_slider.)
        k_min, k_max = float(handle.get_attribute("aria-valuemin")), float(handle.get_attribute("aria-valuemax"))
        candidates = sorted((round(before_k + 0.1 * n, 1) for n in range(-30, 31) if n),
                            key=lambda k: (abs(k - before_k), k))
        target = next(k for k in candidates if k_min <= k <= k_max and abs(k - before_k) >= 0.25 and
                      f"{rl.openset.tune(val, k=k, classes=known)['macro_f1']:.4f}" != before_text)
        tuner.scroll_into_view_if_needed()
        page.screenshot(path=str(shots["before"]))

        # Move the slider as a keyboard user does: focus the handle, arrow keys (one step of 0.1 each).
        handle.focus()
        steps = round((target - before_k) / 0.1)
        for _ in range(abs(steps)):
            handle.press("ArrowRight" if steps > 0 else "ArrowLeft")
        expect(readout).to_contain_text(f"k = {target:.1f},", timeout=UPDATE_MS)
        new_k = float(handle.get_attribute("aria-valuenow"))
        assert round(new_k, 1) == target
        expected = f"{rl.openset.tune(val, k=new_k, classes=known)['macro_f1']:.4f}"
        expect(readout.locator("span.macro-f1")).to_have_text(expected, timeout=UPDATE_MS)
        assert expected != before_text

        # Once the slider settles the kernel recomputes in full: the confusion matrix is redrawn at the new k.
        expect(tuner.locator("img.receiptlib-tuner-confusion")).to_have_attribute(
            "title", re.compile(rf"k = {target:.1f},"), timeout=UPDATE_MS)

        # Save: the file now holds the thresholds at the new k.
        page.get_by_role("button", name="save thresholds").click()
        expect(status).to_contain_text(f"k={target:.1f}", timeout=UPDATE_MS)
        expect(statusbar).to_contain_text(re.compile(r"\| Idle"), timeout=KERNEL_MS)
        tuner.scroll_into_view_if_needed()
        page.screenshot(path=str(shots["after"]))
        detector = rl.openset.load_thresholds(thresholds_file, classes=known)
        assert isinstance(detector, rl.openset.PerClassLogit)
        assert detector.params["k"] == pytest.approx(new_k, abs=1e-9)
        library = rl.openset.tune(val, k=new_k, classes=known)["thresholds"]
        assert detector.thresholds_ == pytest.approx([library[c] for c in known], rel=1e-9, abs=1e-9)
        assert rl.openset.evaluate(detector, val)["macro_f1"] == pytest.approx(
            rl.openset.tune(val, k=new_k, classes=known)["macro_f1"])
        expect(page.get_by_text("Error displaying widget")).to_have_count(0)
        # outputs made in this session are trusted, so the kernel-free tuner's script ran here too
        expect(notebook.locator(".receiptlib-kernel-free-tuner[data-ready] .rl-readout")).to_have_count(1)
    except BaseException:
        try:
            page.screenshot(path=str(shots["failure"]))
        finally:
            print(f"\nbrowser test failed; screenshot {shots['failure']}, console errors {page.console_errors[-10:]}, "
                  f"JupyterLab log (last lines):\n{jupyterlab['log'].read_text()[-2000:]}")
        raise
    print(f"\nbrowser test: k {before_k:.1f} -> {new_k:.1f}, macro-F1 {before_text} -> {expected}, "
          f"{time.monotonic() - start:.0f} s in the browser")
    print(f"screenshots: {shots['before']} {shots['after']}")


# -- the kernel-free tuner in the executed notebook's HTML export ------------------------------------------
@pytest.fixture
def exported_04(tiny_run, report_dirs, tmp_path):
    """Notebook 04 executed on the tiny preset (as `make report` executes it), then exported to HTML with
    nbconvert: the page a reader opens without Jupyter."""
    from nbconvert import HTMLExporter

    executed = tmp_path / NOTEBOOK.name
    rl.report.execute(NOTEBOOK, executed, {
        "PRESET": "tiny", "SEED": 0, "DATA_ROOT": str(report_dirs["data"]), "FIGURES_DIR": str(tmp_path / "figures"),
        "RESULTS_DIR": str(tmp_path / "results"), "THRESHOLDS_FILE": str(tmp_path / "thresholds.json")},
        cwd=NOTEBOOK.parent)
    body, _ = HTMLExporter(template_name="lab").from_filename(str(executed))
    page = tmp_path / "04_thresholds.html"
    page.write_text(body, encoding="utf-8")
    return page


@pytest.fixture
def offline_page(browser_requirements, tmp_path):
    """A headless Chromium page that can load files only: every other request (a CDN's script, a kernel's
    websocket) is refused and recorded in page.refused."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.refused, page.errors = [], []
            page.on("pageerror", lambda error: page.errors.append(str(error)))

            def route(r):
                if r.request.url.startswith("file://"):
                    r.continue_()
                else:
                    page.refused.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            yield page
        finally:
            browser.close()


def shown(tuner, field: str) -> float:
    """The exact value behind a readout field (the page keeps it beside the rounded text)."""
    return float(tuner.locator(f".rl-readout .{field}").get_attribute("data-value"))


def check_grid_point(tuner, val, known, i: int, *, confusion: bool):
    """The readout (and with ``confusion`` the confusion counts) at grid index i equal `openset.tune` there."""
    from playwright.sync_api import expect

    k = rl.openset.k_grid()[i]
    expected = rl.openset.tune(val, k=k, classes=known)
    expect(tuner.locator(".rl-readout .k")).to_have_text(f"{k:g}")
    for field in ("macro_f1", "other_f1", "other_precision", "other_recall"):
        css = field.replace("_", "-")
        assert shown(tuner, css) == expected[field], (k, field)
        assert tuner.locator(f".rl-readout .{css}").inner_text() == f"{expected[field]:.{4 if 'f1' in field else 3}f}"
    if confusion:
        expect(tuner.locator("table.rl-confusion")).to_have_attribute("data-k", f"{k:g}")
        counts = tuner.locator("td.rl-count").evaluate_all("cells => cells.map(c => Number(c.dataset.count))")
        assert counts == [n for row in expected["confusion"] for n in row], k
    return expected


@pytest.mark.slow
@pytest.mark.browser
def test_kernel_free_tuner_in_the_html_export(tiny_run, exported_04, offline_page, tmp_path):
    from playwright.sync_api import expect

    start, page = time.monotonic(), offline_page
    shots = fresh_screenshots("kernel_free")
    known = tiny_run.classes[:-1]
    val = rl.openset.Outputs.from_run(tiny_run, "val")
    try:
        page.goto(exported_04.as_uri())
        tuner = page.locator(".receiptlib-kernel-free-tuner[data-ready]")
        expect(tuner).to_have_count(1, timeout=UPDATE_MS)
        expect(tuner.locator(".rl-note")).to_have_count(0)  # the no-script note gives way to the tuner

        # What the page embeds is the library's tune at every grid point, as the notebook computed it.
        grid = embedded(exported_04.read_text(encoding="utf-8"))["grid"]
        assert [g["k"] for g in grid] == rl.openset.k_grid()
        for g in grid:
            expected = rl.openset.tune(val, k=g["k"], classes=known)
            assert all(g[key] == expected[key] for key in ("macro_f1", "other_f1", "other_precision", "other_recall",
                                                           "confusion")), g["k"]
        slider = tuner.locator("input.rl-k")
        n = int(slider.get_attribute("max")) + 1
        assert n == len(rl.openset.k_grid())
        before = int(slider.input_value())
        check_grid_point(tuner, val, known, before, confusion=True)
        tuner.scroll_into_view_if_needed()
        page.screenshot(path=str(shots["before"]))

        # Drag the handle with the mouse towards the far end: while the button is down the readout follows
        # the handle (input events) and the confusion counts stay; on release (change) they follow.
        box = slider.bounding_box()
        x_at = lambda i: box["x"] + 8 + (box["width"] - 16) * i / (n - 1)  # noqa: E731  (thumb about 16 px wide)
        target = n - 1 - n // 6 if before < n // 2 else n // 6
        page.mouse.move(x_at(before), box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(x_at(target), box["y"] + box["height"] / 2, steps=8)
        dragged = int(slider.input_value())
        assert abs(dragged - target) <= 2 and dragged != before, (before, target, dragged)
        check_grid_point(tuner, val, known, dragged, confusion=False)
        expect(tuner.locator("table.rl-confusion")).to_have_attribute("data-k", f"{rl.openset.k_grid()[before]:g}")
        expect(tuner.locator(".rl-state")).to_contain_text("dragging")
        page.mouse.up()
        expected = check_grid_point(tuner, val, known, dragged, confusion=True)
        expect(tuner.locator(".rl-state")).to_have_text("")
        page.screenshot(path=str(shots["after"]))

        # A preset: the slider jumps to its grid point and the note says where it lands.
        presets = {p.name: p for p in rl.openset.threshold_presets(rl.openset.tune_grid(val, classes=known))}
        tuner.locator("button.rl-preset[data-preset='tpr95']").click()
        assert int(slider.input_value()) == presets["tpr95"].index
        check_grid_point(tuner, val, known, presets["tpr95"].index, confusion=True)
        expect(tuner.locator(".rl-preset-note")).to_contain_text(f"k = {presets['tpr95'].k:g}")
        if presets["tpr95"].warning:
            expect(tuner.locator(".rl-preset-note")).to_contain_text("Warning:")

        # The keyboard moves one grid point, as a release does.
        slider.focus()
        slider.press("ArrowRight" if presets["tpr95"].index < n - 1 else "ArrowLeft")
        check_grid_point(tuner, val, known, int(slider.input_value()), confusion=True)
        assert not [e for e in page.errors if "rl-" in e or "receiptlib" in e], page.errors
        assert all(url.startswith(("http://", "https://", "ws://", "wss://")) for url in page.refused)
    except BaseException:
        page.screenshot(path=str(shots["failure"]), full_page=True)
        print(f"\nkernel-free browser test failed; screenshot {shots['failure']}; page errors {page.errors}")
        raise
    print(f"\nkernel-free tuner: k {rl.openset.k_grid()[before]:g} -> {rl.openset.k_grid()[dragged]:g} by a drag "
          f"(macro-F1 {expected['macro_f1']:.4f}), {len(page.refused)} network requests refused, "
          f"{time.monotonic() - start:.0f} s in the browser")
    print(f"screenshots: {shots['before']} {shots['after']}")
