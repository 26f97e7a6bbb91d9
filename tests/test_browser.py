"""The explorer notebook in a real browser: JupyterLab, headless Chromium, live ipywidgets.

nbval and papermill only see a widget's text repr ("Explorer(children=(HBox(...") and cannot
tell whether the panel works where people use it. This test trains a few tiny runs into a
temporary ``results/``, serves a copy of ``notebooks/explorer.ipynb`` with JupyterLab on
loopback, runs all its cells in Chromium, waits for the controls and the figure (a PNG in the
widget's Image), changes the seed and checks that the figure is redrawn.

Screenshots (before/after the change) and the browser console go to ``tests/artifacts/``.
Without playwright, JupyterLab or a Chromium the test is skipped, unless
``LOWRANK_REQUIRE_BROWSER=1`` (CI), where it fails instead.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "explorer.ipynb"
ARTIFACTS = ROOT / "tests" / "artifacts"
REQUIRE_ENV = "LOWRANK_REQUIRE_BROWSER"
CHROMIUM_ENV = "LOWRANK_CHROMIUM"  # another Chromium binary than the default
CHROMIUM_DEFAULT = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic"]

SERVER_START_S = 120      # JupyterLab answering /api/status (loaded CI machines are slow)
PAGE_LOAD_S = 120         # the lab page and the notebook's cells
KERNEL_IDLE_S = 120       # kernel start (imports torch)
PANEL_S = 120             # run all cells: load records, build the panel, draw the first figure
REDRAW_S = 60             # a control change to a new figure

pytestmark = pytest.mark.browser


def _unavailable(reason: str):
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: the browser test must run, not skip)",
                    pytrace=False)
    pytest.skip(reason)


def _chromium() -> str:
    """Path of the Chromium binary, or skip (fail under LOWRANK_REQUIRE_BROWSER=1)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        _unavailable(f"playwright is not installed ({exc})")
    try:
        import jupyterlab  # noqa: F401
    except ImportError as exc:
        _unavailable(f"jupyterlab is not installed ({exc})")
    path = os.environ.get(CHROMIUM_ENV) or CHROMIUM_DEFAULT
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        found = None if os.environ.get(CHROMIUM_ENV) else (
            shutil.which("chromium") or shutil.which("chromium-browser"))
        if not found:
            _unavailable(f"no Chromium at {path} (set ${CHROMIUM_ENV} to use another binary)")
        path = found
    return path


# ---------------------------------------------------------------------------------------------
# records and notebook in a temporary folder


def _make_workspace(tmp: Path) -> int:
    """Copy the notebook to ``tmp/notebooks`` and train tiny runs into ``tmp/results``
    (the notebook's ``results_dir = "../results"``); return the number of records."""
    import torch

    import lowrank_helpers as lh

    (tmp / "notebooks").mkdir()
    shutil.copy(NOTEBOOK, tmp / "notebooks" / NOTEBOOK.name)
    results = tmp / "results"
    data = lh.load_data("fashion_mnist", root=os.environ["LOWRANK_DATA"], train_subset=256,
                        test_subset=128, download=False)
    runs = [lh.RunConfig(method=method, rank=rank, seed=seed, epochs=2, train_subset=256,
                         test_subset=128)
            for seed in (0, 1)
            for method, rank in (("full", None), ("lora", 1), ("lora", 4), ("ae", 1), ("ae", 4))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; leave the cores to whatever else runs
    try:
        for run in runs:
            lh.save_record(lh.run_one(run, data, device="cpu", progress=False), results)
    finally:
        torch.set_num_threads(threads)
    return len(runs)


# ---------------------------------------------------------------------------------------------
# JupyterLab server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET", timeout: float = 5):
    req = urllib.request.Request(f"{base}{path}", method=method,
                                 headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (this test's unique runtime folder:
    the kernels that this test's server started). Nothing else matches it."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


class Lab:
    """A JupyterLab server rooted at ``root``, with its config, data, runtime, settings and
    workspaces under ``root/.jupyter-test`` (the user's ~/.jupyter is left alone)."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        home = root / ".jupyter-test"
        self.runtime = home / "runtime"
        dirs = {name: home / name for name in ("config", "data", "runtime", "ipython",
                                                "settings", "workspaces", "mpl")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        # No news and no update check: nothing to fetch, and no toast asking about it.
        notification = dirs["settings"] / "@jupyterlab" / "apputils-extension"
        notification.mkdir(parents=True, exist_ok=True)
        (notification / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = dict(os.environ)
        env.update(JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]),
                   JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), IPYTHONDIR=str(dirs["ipython"]),
                   JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
                   JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
                   MPLCONFIGDIR=str(dirs["mpl"]),
                   PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in
                                              env.get("PYTHONPATH", "").split(os.pathsep) if p]))
        env.pop("JUPYTER_TOKEN", None)
        self.log_path = home / "server.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False",
               "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               f"--LabApp.user_settings_dir={dirs['settings']}",
               f"--LabApp.workspaces_dir={dirs['workspaces']}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # containers and CI runners often run as root
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log()}")
            try:
                _api(self.base, self.token, "/api/status", timeout=2)
                return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n"
                                   f"{self.log()}")
            time.sleep(0.25)  # polling an HTTP endpoint: there is no event to wait on

    def url(self, path: str) -> str:
        return f"{self.base}{path}?token={self.token}"

    def stop(self) -> None:
        """Shut the kernels and the server down; kill whatever is left of them, by pid."""
        if self.proc.poll() is None:
            try:
                for kernel in _api(self.base, self.token, "/api/kernels") or []:
                    _api(self.base, self.token, f"/api/kernels/{kernel['id']}", "DELETE",
                         timeout=30)
            except (urllib.error.URLError, OSError, ValueError):
                pass
            self.proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down too
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in _pids_using(str(self.runtime)):  # kernels that outlived their server
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()


@pytest.fixture
def chromium_path():
    return _chromium()


@pytest.fixture
def lab(tmp_path, chromium_path):
    n_records = _make_workspace(tmp_path)
    server = Lab(tmp_path)
    try:
        server.wait_ready(SERVER_START_S)
        server.n_records = n_records
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# the page

#: The figure: a PNG that the explorer's Image widget shows (as a blob: URL).
IMAGE = ".jp-NotebookPanel:not(.lm-mod-hidden) .jupyter-widgets img.widget-image"

#: A new figure (another PNG than ``before``) is shown.
REDRAWN_JS = r"""
([selector, before]) => {
  const img = document.querySelector(selector);
  return !!img && img.complete && img.naturalWidth > 0
         && img.src.startsWith('blob:') && img.src !== before;
}
"""

#: The notebook's state as the page shows it: "panel" once the widget's figure is there, a
#: failure ("error: ...") as soon as one shows, or null while it is still coming.
PANEL_STATE_JS = r"""
() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!nb) return null;
  const text = nb.innerText;
  let m = text.match(/Error displaying widget[^\n]*/);
  if (m) return 'error: the page shows "' + m[0] + '"';
  m = text.match(/\S*Traceback \(most recent call last\)[\s\S]{0,1500}/);
  if (m) return 'error: a cell raised:\n' + m[0];
  // With a working widget manager the widget's text/plain repr is never shown.
  m = text.match(/\w+\(children=\([\s\S]{0,300}/);
  if (m) return 'error: the panel rendered as its text repr, not as a widget (is the widget ' +
                'manager @jupyter-widgets/jupyterlab-manager active in JupyterLab?):\n' + m[0];
  const img = nb.querySelector('.jupyter-widgets img.widget-image');
  if (img && img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0
      && nb.querySelector('.widget-dropdown select')
      && nb.querySelector('.widget-select-multiple select'))
    return 'panel';
  return null;
}
"""

#: The notebook's kernel is started, connected and idle. The toolbar's execution indicator
#: alone is not enough: it reads "idle" before any kernel exists, while the status bar still
#: says "No Kernel", and Run All Cells then silently runs nothing.
KERNEL_READY_JS = r"""
() => {
  const indicator = document.querySelector(
      '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
  const status = [...document.querySelectorAll('.jp-StatusBar-TextItem')]
      .find(e => (e.title || '').startsWith('Change kernel'));
  return !!indicator && indicator.dataset.status === 'idle' && !!status
         && / \| Idle$/.test(status.innerText) && !status.innerText.startsWith('No Kernel');
}
"""

#: What the last cell's output shows, for failure messages (e.g. "Loading widget..." or the
#: text repr "Explorer(children=(HBox(..." when no widget manager renders the model).
LAST_OUTPUT_JS = r"""
() => {
  const outs = document.querySelectorAll(
      '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .jp-OutputArea');
  return outs.length ? outs[outs.length - 1].innerText.slice(0, 1500) : '(no output area)';
}
"""


def _explain_no_panel(page, timeout: float) -> str:
    last = page.evaluate(LAST_OUTPUT_JS)
    if "Loading widget" in last:
        why = "the widget stayed at 'Loading widget...' (its model never reached the page)"
    else:
        why = "no widget panel with controls and a figure appeared"
    prompts = " ".join(page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputPrompt")
                       .all_inner_texts())
    return (f"after Run All Cells, {why} within {timeout:.0f} s.\nInput prompts: {prompts} "
            f"(all '[ ]:': nothing ran; '[*]:': still running).\nThe last cell's output:\n{last}")


def _image_src(page) -> str:
    return page.locator(IMAGE).first.get_attribute("src")


def _screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def test_explorer_widgets_in_jupyterlab(lab, chromium_path):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    console: list[str] = []
    blocked: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("explorer_*"):  # no screenshot of an earlier run left behind
        old.unlink()
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=chromium_path, headless=True,
                                         args=CHROMIUM_ARGS)
        except PlaywrightError as exc:
            _unavailable(f"Chromium at {chromium_path} does not start: {exc}")
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1100})
            # Offline by construction: anything but this server is refused (and reported).
            context.route(re.compile(rf"^https?://(?!127\.0\.0\.1:{lab.port}/)"),
                          lambda route: (blocked.append(route.request.url), route.abort()))
            page = context.new_page()
            page.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
            page.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))

            page.goto(lab.url("/lab/tree/notebooks/explorer.ipynb"), timeout=PAGE_LOAD_S * 1000)
            notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
            notebook.locator(".jp-Cell").nth(4).wait_for(timeout=PAGE_LOAD_S * 1000)
            try:
                page.wait_for_function(KERNEL_READY_JS, timeout=KERNEL_IDLE_S * 1000,
                                       polling=250)
            except PlaywrightTimeout:
                _screenshot(page, "explorer_no_kernel.png")
                pytest.fail(f"the kernel was not idle within {KERNEL_IDLE_S} s; server log:\n"
                            f"{lab.log()}")

            # Run ▸ Run All Cells, from the menu bar as a user would.
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel",
                         has_text=re.compile(r"^Run All Cells$")).click()

            try:
                state = page.wait_for_function(PANEL_STATE_JS, timeout=PANEL_S * 1000,
                                               polling=250).json_value()
            except PlaywrightTimeout:
                _screenshot(page, "explorer_no_panel.png")
                pytest.fail(_explain_no_panel(page, PANEL_S), pytrace=False)
            if state != "panel":
                _screenshot(page, "explorer_error.png")
                pytest.fail(state.removeprefix("error: "), pytrace=False)

            page.get_by_text(f"{lab.n_records} records in ../results").wait_for(timeout=5000)
            panel = notebook.locator(".jupyter-widgets.widget-vbox").first

            def control(kind: str, label: str):
                found = notebook.locator(f".widget-{kind}").filter(
                    has=page.get_by_text(label, exact=True)).locator("select")
                assert found.count() == 1, f"no (or several) {kind} labelled {label!r}"
                return found

            # Every control shows a choice, and the choices come from the records.
            for label in ("task", "protocol", "seed", "curves"):
                chosen = control("dropdown", label).evaluate(
                    "s => s.selectedIndex < 0 ? null : s.options[s.selectedIndex].text")
                assert chosen, f"the {label!r} dropdown selects nothing"
            for label, options in (("methods", ["full", "lora", "ae"]), ("ranks", ["1", "4"])):
                select = control("select-multiple", label)
                shown = select.locator("option").all_inner_texts()
                chosen = select.evaluate("s => [...s.selectedOptions].map(o => o.text)")
                assert shown == options and chosen == options, \
                    f"{label}: options {shown}, selected {chosen}; expected all of {options}"

            panel.scroll_into_view_if_needed()
            before = _image_src(page)
            assert before.startswith("blob:")
            _screenshot(page, "explorer_before.png")

            # One seed instead of the mean over both: the kernel must redraw the figure.
            seed = control("dropdown", "seed")
            options = seed.locator("option").all_inner_texts()
            assert options[1:] == ["0", "1"], f"seed options {options}"
            seed.select_option(label="1")
            try:
                page.wait_for_function(REDRAWN_JS, arg=[IMAGE, before],
                                       timeout=REDRAW_S * 1000, polling=250)
            except PlaywrightTimeout:
                _screenshot(page, "explorer_no_redraw.png")
                pytest.fail(f"the figure was not redrawn within {REDRAW_S} s of choosing seed 1 "
                            f"(the kernel may not receive widget changes)", pytrace=False)
            after = _image_src(page)
            assert after != before
            assert page.evaluate(PANEL_STATE_JS) == "panel"
            panel.scroll_into_view_if_needed()
            _screenshot(page, "explorer_after.png")
        finally:
            (ARTIFACTS / "explorer_console.log").write_text(
                "\n".join(console + [f"[blocked] {u}" for u in blocked]) + "\n")
            browser.close()
    assert not [m for m in console if m.startswith("[pageerror]")], \
        "uncaught errors in the page:\n" + "\n".join(console)
