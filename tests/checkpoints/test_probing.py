"""The probe: real or synthetic batches, recorded runs, manual checks, uploaded batches and image folders."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import diagnostics as dx
from diagnostics.checkpoints.probing import Batch, ProbeError, folder_batch, load_batch_file


def test_a_project_cnn_is_probed_on_the_bundled_digits_and_recorded(store):
    model = dx.build_cnn(dx.variant_config("plain", depth=3, width=4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = dx.probe(model, store=store, steps=3, lr=0.1)
    assert not result.synthetic and "digits" in result.batch_source
    assert sorted(result.frame["step"].unique()) == [0, 1, 2] and len(result.losses) == 3
    assert result.frame["update_ratio"].notna().any()
    assert (result.checks["status"] == "pass").all() and set(result.checks["tensor"]) >= {"input", "weight"}
    assert store.meta(result.run_id)["probe"] is True and store.kernel_steps(result.run_id)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])                       # the model itself is untouched


def test_a_torchvision_model_gets_a_visible_synthetic_batch():
    model = torchvision.models.mobilenet_v3_small(num_classes=3)
    result = dx.probe(model, input_shape=(3, 32, 32), check=False)
    assert result.synthetic and "synthetic" in result.batch_source
    assert result.run_id is None and not result.frame.empty and result.checks.empty


def test_uploaded_batch_files_are_loaded_safely():
    buf = io.BytesIO()
    torch.save({"x": torch.randn(4, 1, 8, 8), "y": torch.tensor([0, 1, 2, 3])}, buf)
    batch = load_batch_file(buf.getvalue())
    assert batch.x.shape == (4, 1, 8, 8) and batch.y.tolist() == [0, 1, 2, 3] and not batch.synthetic
    model = dx.build_cnn(dx.variant_config("batchnorm", depth=2, width=4))
    result = dx.probe(model, batch, check=False)
    assert result.batch_source.startswith("uploaded batch")
    buf = io.BytesIO()
    torch.save({"inputs": [1, 2]}, buf)
    with pytest.raises(ProbeError, match="must hold"):
        load_batch_file(buf.getvalue())


def test_a_batch_that_does_not_fit_the_model_is_a_clear_error():
    model = dx.build_cnn(dx.variant_config("plain", depth=2, width=4))
    with pytest.raises(ProbeError, match="could not run on the batch"):
        dx.probe(model, torch.randn(2, 3, 8, 8), check=False)
    with pytest.raises(ProbeError, match="labels go up to 50"):
        dx.probe(model, Batch(torch.randn(2, 1, 8, 8), torch.tensor([50, 1]), "test", False), check=False)


def test_an_image_folder_feeds_the_probe(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    batch = folder_batch(tmp_path, (3, 16, 16), batch_size=4)
    assert batch.x.shape == (4, 3, 16, 16) and set(batch.y.tolist()) <= {0, 1}
    with pytest.raises(ProbeError, match="does not exist"):
        folder_batch(tmp_path / "missing", (3, 16, 16))
