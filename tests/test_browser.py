"""End to end in a real browser: JupyterLab on 127.0.0.1, driven by headless Chromium through Playwright.

Playwright drives Debian's ``chromium`` package (``/usr/bin/chromium``) because
downloading Playwright's own browser build needs internet access. ``make
browser`` installs the package when it is missing. Run this test alone with
``pytest -m browser``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

CHROMIUM = Path(os.environ.get("LABKIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Seconds per step. The whole test took 44 s on two shared CPU cores; the limit leaves room for slower machines.
STARTUP_TIMEOUT = 180
EPOCHS = 3

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} not found; install it with `make browser`"),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_panel_notebook(root: Path) -> Path:
    """Write a notebook whose only cell shows the panel for a tiny VGG_08 on synthetic data."""
    settings = dict(num_blocks_per_stage=0, num_filters=8, epochs=EPOCHS, batch_size=50, device="cpu",
                    data="synthetic", data_dir=str(root / "data"), synthetic_train_size=200, synthetic_test_size=50)
    code = ("from labkit.widgets import show_panel\n"
            f"panel = show_panel(**{settings!r})")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = root / "panel.ipynb"
    nbformat.write(notebook, path)
    return path


def _lab_environment(home: Path) -> dict[str, str]:
    """Environment that keeps JupyterLab's and IPython's state in ``home`` and turns off news fetching."""
    settings = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    config = home / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps({"LabApp": {
        "news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate", "extension_manager": "readonly",
    }}))
    env = {key: value for key, value in os.environ.items() if key != "LABKIT_PANEL"}
    env.update(JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(home / "lab-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), IPYTHONDIR=str(home / "ipython"))
    return env


def _wait_until_ready(url: str, token: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    request = urllib.request.Request(f"{url}/api/status", headers={"Authorization": f"token {token}"})
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab at {url} timed out: no response within {STARTUP_TIMEOUT} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def jupyterlab(tmp_path):
    """Start JupyterLab on 127.0.0.1 with a token in a temporary root; yield (url, token, root)."""
    import psutil

    root = tmp_path / "root"
    root.mkdir()
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", "--ServerApp.terminals_enabled=False",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        # CI containers run as root, which JupyterLab refuses without this flag.
        command.append("--allow-root")
    with log.open("w") as output:
        server = subprocess.Popen(command, cwd=root, env=_lab_environment(tmp_path / "home"), stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, token, server, log)
        yield url, token, root
    finally:
        _stop_server(server, url, token, psutil)


def _stop_server(server: subprocess.Popen, url: str, token: str, psutil) -> None:
    """Shut the server down through its API, then end it and its kernels by process id if they remain."""
    try:
        children = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    request = urllib.request.Request(f"{url}/api/shutdown", method="POST",
                                     headers={"Authorization": f"token {token}"})
    try:
        urllib.request.urlopen(request, timeout=10).close()
        server.wait(timeout=30)
    except (urllib.error.URLError, ConnectionError, TimeoutError, subprocess.TimeoutExpired):
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    for child in children:
        if child.is_running():
            child.kill()


@pytest.fixture
def browser_page(tmp_path):
    """A Playwright page in headless Chromium with a new, empty profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1100})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def _save_screenshot(page, tmp_path: Path, name: str, record_property) -> Path:
    """Save a full-page screenshot under tmp_path, and a copy under $LABKIT_TEST_ARTIFACTS when set."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    record_property(name, str(path))
    if os.environ.get("LABKIT_TEST_ARTIFACTS"):
        target = Path(os.environ["LABKIT_TEST_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / name)
    print(f"screenshot: {path}")
    return path


# Records every text the epoch label shows, so that no epoch goes unseen however fast training runs.
RECORD_EPOCH_LABELS = """() => {
    const label = document.querySelector('.lk-epoch-label');
    window.lkEpochLabels = [];
    new MutationObserver(() => window.lkEpochLabels.push({label: label.textContent.trim()}))
        .observe(label, {childList: true, characterData: true, subtree: true});
}"""


def test_panel_trains_in_browser(jupyterlab, browser_page, tmp_path, record_property):
    from playwright.sync_api import expect

    url, token, root = jupyterlab
    _write_panel_notebook(root)
    page = browser_page
    page.set_default_timeout(STARTUP_TIMEOUT * 1000)
    expect.set_options(timeout=STARTUP_TIMEOUT * 1000)
    try:
        page.goto(f"{url}/lab/tree/panel.ipynb?token={token}")
        expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible()
        page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
        page.keyboard.press("Shift+Enter")

        # The panel shows the architecture and the gradient flow at initialization before any training.
        panel = page.locator(".lk-panel")
        expect(panel).to_be_visible()
        expect(page.locator(".lk-architecture")).to_contain_text("VGG_08: 8 weight layers")
        expect(page.locator(".lk-depth-label")).to_have_text("8 layers")
        expect(page.locator(".lk-grad-flow svg #lk-grad-init")).to_have_count(1)
        assert page.locator('.lk-curves svg [id^="lk-curve-"]').count() == 0

        page.locator(".lk-bn").click()
        expect(page.locator(".lk-architecture")).to_contain_text("VGG_08 BN: 8 weight layers")
        expect(page.locator(".lk-grad-flow svg")).to_contain_text("VGG_08 BN at initialization")
        page.evaluate(RECORD_EPOCH_LABELS)
        page.locator(".lk-train-button").click()

        expect(page.locator(".lk-status")).to_contain_text(f"finished after {EPOCHS} of {EPOCHS} epochs")
        labels = [entry["label"] for entry in page.evaluate("window.lkEpochLabels")]
        assert list(dict.fromkeys(labels)) == [f"epoch {epoch}/{EPOCHS}" for epoch in range(EPOCHS + 1)]
        expect(page.locator('.lk-curves svg [id^="lk-curve-1-"]')).to_have_count(4)
        expect(page.locator(".lk-curves svg")).to_contain_text("#1 VGG_08 BN, lr 0.001, synthetic data")
        assert page.locator(".lk-curves svg #lk-curve-1-val-loss use").count() == EPOCHS
        expect(page.locator(".lk-grad-flow svg #lk-grad-1")).to_have_count(1)
        _save_screenshot(page, tmp_path, "panel.png", record_property)
    except Exception:
        _save_screenshot(page, tmp_path, "panel-failure.png", record_property)
        _print_diagnostics(page, tmp_path / "jupyterlab.log")
        raise


def _print_diagnostics(page, log: Path) -> None:
    """Print what the panel showed and the end of the server log, where kernel errors land."""
    for selector in (".lk-status", ".lk-epoch-label", ".jp-Notebook .jp-OutputArea-output"):
        texts = page.locator(selector).all_inner_texts()
        print(f"{selector}: {[text[:500] for text in texts]}")
    print("epoch labels seen:", page.evaluate("window.lkEpochLabels || null"))
    print("server log tail:\n" + log.read_text()[-4000:])
