"""The Checkpoint page in Chromium with the checkpoints people download: a Hugging Face model's files, a
``torch.export`` archive and a timm state dict uploaded in one go, recognised and probed in the real app."""

from __future__ import annotations

import pytest
import torch

from tests.app.test_checkpoint_page import saved
from tests.checkpoints.test_exported import Residual, archive_of
from .conftest import start_app

pytestmark = pytest.mark.browser


def test_hugging_face_files_a_pt2_archive_and_a_timm_state_dict_upload_and_probe_in_chromium(
        browser, artifacts, tmp_path):
    import timm
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "residual.pt2").write_bytes(archive_of(Residual(), torch.randn(4, 3, 8, 8)))
    (tmp_path / "mobilenet.pth").write_bytes(saved(timm.create_model("mobilenetv3_small_050", num_classes=3)
                                                   .state_dict()))
    uploads = [str(p) for p in sorted((tmp_path / "gpt2").iterdir())] + [str(tmp_path / "residual.pt2"),
                                                                         str(tmp_path / "mobilenet.pth")]
    proc, url = start_app(tmp_path / "runs")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 5200})
        page.goto(f"{url}/checkpoint")
        page.wait_for_selector("[data-testid='stApp']", timeout=60_000)
        page.get_by_text("Drop a checkpoint").first.wait_for(timeout=90_000)
        page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(uploads)
        for architecture in ("GPT2LMHeadModel (transformers gpt2, causal_lm)", "torch.export program",
                             "timm mobilenetv3_small_050"):
            page.get_by_text(architecture).first.wait_for(timeout=120_000)
        page.get_by_role("button", name="Run the probe").click()
        page.get_by_text("token ids").first.wait_for(timeout=180_000)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 1",
                               timeout=90_000)
        page.wait_for_timeout(800)
        assert page.get_by_text("Probed on synthetic data").count() == 3
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(artifacts / "page-checkpoint-hf-pt2-timm.png"), full_page=True)
        page.close()
    finally:
        proc.kill()
        proc.wait()
