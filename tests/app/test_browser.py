"""The real app in Chromium: every page renders without a Streamlit exception; screenshots are saved."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diagnostics as dx

from .conftest import start_app

pytestmark = pytest.mark.browser


def wait_for_app(page) -> None:
    page.wait_for_selector("[data-testid='stApp']", timeout=60_000)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
    page.wait_for_timeout(500)


def test_home_page_lists_runs_in_chromium(tmp_path, browser, artifacts):
    store = dx.RunStore(tmp_path / "runs")
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with dx.GradientMonitor(model, store=store, run_name="browser run") as mon:
        for _ in range(3):
            model(torch.randn(2, 3)).sum().backward()
            mon.step()
            model.zero_grad()
    proc, url = start_app(store.root)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        wait_for_app(page)
        page.get_by_text("Gradient Flow Diagnostics").first.wait_for(timeout=30_000)
        page.get_by_text("1 run(s) in").first.wait_for(timeout=30_000)
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(artifacts / "home.png"), full_page=True)
    finally:
        proc.kill()
