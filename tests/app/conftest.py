"""Fixtures for page tests: a store with real recorded runs, a live Streamlit server, a Chromium browser."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _roots_include_pytest_temp(tmp_path_factory, monkeypatch):
    """Page tests keep their stores under pytest's temporary folder: make it one of the dashboard's roots."""
    monkeypatch.setenv("GFD_ROOTS", os.pathsep.join([str(tmp_path_factory.getbasetemp()), str(ROOT)]))


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium; without it browser tests skip locally with a reason, but fail in CI."""
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not path:
        message = (f"Chromium not found at {CHROMIUM}: install it (apt-get install -y chromium) to run the "
                   "browser tests")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: browser tests are required)")
        pytest.skip(message)
    return path


def open_page(browser, url: str, height: int = 4200, timeout_ms: int = 60_000):
    """A new Chromium page at ``url``, once the app has rendered and stopped running its script."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(url)
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout_ms)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)
    return page


def start_app(store: Path, extra_env: dict[str, str] | None = None):
    port = _free_port()
    env = {**os.environ, "GFD_STORE": str(store), "PYTHONPATH": str(ROOT), **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.fileWatcherType", "none", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
        if proc.poll() is not None:
            break
    proc.kill()
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    raise RuntimeError(f"streamlit did not become healthy:\n{output[-3000:]}")


@pytest.fixture
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                  "--no-first-run", "--disable-component-update", "--disable-sync"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
