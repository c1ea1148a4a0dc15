"""A shared dashboard in Chromium, started by its launcher: the token printed at start-up and required before any
page, read-only mode, and the Host check against DNS rebinding (a name re-pointed at this machine)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from . import conftest
from .conftest import ROOT, _free_port

pytestmark = pytest.mark.browser

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                "--no-first-run", "--disable-component-update", "--disable-sync"]


def launch(store: Path, *options: str):
    """``python -m diagnostics.serving <options>`` on a free port; returns the process and its URL."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GFD_ROOTS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diagnostics.serving", "--store", str(store), *options, "--server.headless", "true",
         "--server.fileWatcherType", "none", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        raise RuntimeError(f"the launcher did not start the app:\n{proc.stdout.read()[-3000:]}")
    return proc, url


def printed_token(proc) -> str:
    """The token the launcher printed (before Streamlit's own lines)."""
    seen = ""
    for _ in range(40):
        seen += proc.stdout.readline()
        found = re.search(r"\?token=([\w-]+)", seen)
        if found:
            return found.group(1)
    raise AssertionError(f"no token printed:\n{seen}")


@pytest.fixture
def chromium(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True,
                                     args=[*BROWSER_ARGS, "--host-resolver-rules=MAP evil.example 127.0.0.1"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def served(tmp_path):
    started = []

    def start(*options: str):
        proc, url = launch(tmp_path / "runs", *options)
        started.append(proc)
        return proc, url

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def open_page(browser, url: str):
    return conftest.open_page(browser, url, height=1600, timeout_ms=120_000)


def test_the_token_is_printed_at_start_up_and_required_before_any_page(served, chromium, artifacts):
    proc, url = served("--token")
    token = printed_token(proc)
    page = open_page(chromium, f"{url}/compare")                     # a page's own URL, no token
    page.get_by_text("needs a token").first.wait_for(timeout=120_000)
    assert page.locator("[data-testid='stSidebarNav']").count() == 0
    assert page.get_by_text("Compare training").count() == 0
    page.screenshot(path=str(artifacts / "sharing-token-form.png"))
    page.get_by_label("Token", exact=True).fill("not-the-token")
    page.get_by_role("button", name="Open the dashboard").click()
    page.get_by_text("That is not the token.").first.wait_for(timeout=30_000)
    page.get_by_label("Token", exact=True).fill(token)
    page.get_by_role("button", name="Open the dashboard").click()
    page.locator("[data-testid='stSidebarNav']").wait_for(timeout=60_000)
    page.screenshot(path=str(artifacts / "sharing-token-opened.png"))
    page.close()
    page = open_page(chromium, f"{url}/?token={token}")              # the printed link opens it at once
    page.get_by_text("Record a run from your own training script").first.wait_for(timeout=120_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


def test_read_only_mode_in_chromium_offers_no_training(served, chromium, artifacts):
    _, url = served("--read-only")
    page = open_page(chromium, f"{url}/compare")
    page.get_by_text("Training is turned off").first.wait_for(timeout=120_000)
    assert page.get_by_role("button", name="Start comparison").count() == 0
    assert page.get_by_label("Run store directory", exact=True).is_disabled()
    page.screenshot(path=str(artifacts / "sharing-read-only-compare.png"))
    page.close()


def test_a_host_name_not_served_sees_only_a_refusal(served, chromium, artifacts):
    _, url = served("--read-only")
    port = url.rsplit(":", 1)[1]
    page = open_page(chromium, f"http://evil.example:{port}/")       # DNS rebinding: a name re-pointed at us
    page.get_by_text("This dashboard does not answer to this address").first.wait_for(timeout=120_000)
    assert page.locator("[data-testid='stSidebarNav']").count() == 0
    assert page.get_by_text("Record a run from your own training script").count() == 0
    page.screenshot(path=str(artifacts / "sharing-host-refused.png"))
    page.close()
    page = open_page(chromium, f"http://localhost:{port}/")
    page.get_by_text("Record a run from your own training script").first.wait_for(timeout=120_000)
    page.close()
