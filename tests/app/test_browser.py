"""The real app in Chromium: every page renders its charts without a Streamlit exception; screenshots saved."""

from __future__ import annotations

import pytest

from tests.recorded import make_store
from .conftest import open_page, start_app

pytestmark = pytest.mark.browser

#: URL path -> (text that must appear, how many plotly charts must render at least)
PAGES = {
    "": ("Gradient Flow Diagnostics", 0),
    "gradient_flow": ("Findings", 8),
    "kernels": ("Kernel heatmaps", 1),
    "compare": ("No comparisons in", 0),
    "checks": ("Errors: manual rule vs autograd", 2),
    "checkpoint": ("Drop a checkpoint", 0),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store, runs = make_store(tmp_path_factory.mktemp("browser") / "runs")
    proc, url = start_app(store.root)
    yield url, runs
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("path", list(PAGES), ids=[p or "runs" for p in PAGES])
def test_page_renders_in_chromium(server, browser, artifacts, path):
    url, _ = server
    text, charts = PAGES[path]
    page = open_page(browser, f"{url}/{path}")
    page.get_by_text(text).first.wait_for(timeout=60_000)
    if charts:
        page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {charts}",
                               timeout=90_000)
    page.wait_for_timeout(800)
    for tab in page.get_by_role("tab").all():              # charts in hidden tabs render once shown
        tab.click()
        page.wait_for_timeout(300)
    page.get_by_role("tab").first.click() if page.get_by_role("tab").count() else None
    page.wait_for_timeout(500)
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.locator("[data-testid='stSidebarNav']").count() == 1          # routed through app.py
    page.screenshot(path=str(artifacts / f"page-{path or 'runs'}.png"))
    page.close()


def test_checkpoint_upload_and_probe_in_chromium(server, browser, artifacts, tmp_path):
    import diagnostics as dx

    url, _ = server
    config = dx.variant_config("batchnorm", depth=4, width=4)
    path = tmp_path / "epoch1.pt"
    dx.save_checkpoint(dx.build_cnn(config), config, path)
    page = open_page(browser, f"{url}/checkpoint")
    page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(path))
    page.get_by_text("project CNN (batchnorm, depth 4, relu)").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Run the probe").click()
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2",
                           timeout=90_000)
    page.get_by_text("Manual backward vs autograd").first.wait_for(timeout=60_000)
    page.wait_for_timeout(800)
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(artifacts / "page-checkpoint-probed.png"))
    page.close()
