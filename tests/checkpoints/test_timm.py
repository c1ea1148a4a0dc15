"""timm state dicts: recognised through the signature index (keys and shapes, no model built per candidate),
rebuilt, probed and checked in float64; training checkpoints, picks by name, wrong picks and the index itself."""

from __future__ import annotations

import io
import time

import pytest
import timm
import torch
from torch.nn import functional as F

import diagnostics as dx
from diagnostics.checkpoints import timm_index
from diagnostics.checkpoints.architecture import recognise
from diagnostics.checkpoints.probing import Batch
from tests.checkpoints.roundtrip import assert_norms_match, float64_weight_grad_norms
from tests.checkpoints.test_loading import Exploit

#: id: (timm name, input size of the probe, what recognition must call it)
MODELS = {
    "resnet50": ("resnet50", 64, "resnet50"),                            # torchvision's resnet50 is the same network
    "efficientnet_b0": ("efficientnet_b0", 64, "timm efficientnet_b0"),
    "convnext_tiny": ("convnext_tiny", 32, "timm convnext_tiny"),
    "vit_tiny": ("vit_tiny_patch16_224", 224, "timm vit_tiny_patch16_224"),
    "swin_tiny": ("swin_tiny_patch4_window7_224", 224, "timm swin_tiny_patch4_window7_224"),
}
CLASSES = 5


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def created(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=CLASSES, drop_path_rate=0.0)


def round_trip(model: torch.nn.Module, ckpt: dx.Checkpoint, size: int, store: dx.RunStore, **rebuild_kwargs):
    built = dx.rebuild(ckpt, **rebuild_kwargs)
    n = 4 if size == 64 else 2                      # batch-norm nets at 64 keep 4 inputs per channel; the rest use LN
    x = torch.randn(n, 3, size, size)                                             # (N, C, H, W)
    y = torch.randint(0, CLASSES, (n,))
    # Histograms are most of a probe's time on these activations; the page's default records them.
    result = dx.probe(built.model, Batch(x, y, "test batch", False), store=store, check=False, histograms=False)
    expected = float64_weight_grad_norms(model, lambda m: F.cross_entropy(m(x.double()), y))
    assert_norms_match(store, result.run_id, expected, min_layers=10)
    return built


@pytest.mark.parametrize("model_id", list(MODELS))
def test_a_timm_state_dict_is_recognised_by_its_keys_and_shapes_and_round_trips(model_id, store):
    name, size, architecture = MODELS[model_id]
    model = created(name)
    ckpt = dx.load_checkpoint(saved(model.state_dict()))
    built = round_trip(model, ckpt, size, store)
    assert built.architecture == architecture
    assert architecture.endswith(name) or f"timm {name}" in built.alternatives
    if model_id == "resnet50":
        assert built.family == "torchvision resnet"
    else:
        assert built.family == f"timm {architecture.split()[1].split('_')[0]}" and built.matched == len(ckpt.state_dict)
    assert built.fixed_size == (size == 224)


def test_deit_tiny_is_recognised_as_the_identical_vit_tiny_from_shapes_alone():
    # DeiT-Ti has ViT-Ti's keys and shapes exactly, so the weights cannot tell them apart: recognition names both,
    # and the vit_tiny round trip above is DeiT-Ti's round trip too. Shapes come from the meta device.
    shapes, _, _ = timm_index.model_shapes("deit_tiny_patch16_224", num_classes=CLASSES)
    found = timm_index.recognise_timm(shapes)
    assert found.name == "vit_tiny_patch16_224" and "deit_tiny_patch16_224" in found.alternatives
    assert found.num_classes == CLASSES and found.input_size == (3, 224, 224)


def test_any_other_timm_model_is_rebuilt_when_picked_by_name(store):
    model = created("lcnet_050")
    ckpt = dx.load_checkpoint(saved(model.state_dict()))
    rec = recognise(ckpt)
    assert rec.built is None and "Pick the timm model by name" in rec.problem
    built = round_trip(model, ckpt, 64, store, timm_name="lcnet_050")
    assert built.architecture == "timm lcnet_050"


def test_a_wrong_pick_or_an_unknown_name_is_refused_with_the_keys_that_differ():
    ckpt = dx.load_checkpoint(saved(created("lcnet_050").state_dict()))
    with pytest.raises(dx.CheckpointError, match=r"do not fit timm's resnet18: \d+ missing .* unexpected"):
        dx.rebuild(ckpt, timm_name="resnet18")
    with pytest.raises(dx.CheckpointError, match="not a timm model name"):
        dx.rebuild(ckpt, timm_name="no_such_model")


@pytest.mark.parametrize("keys", [("state_dict", "state_dict_ema"), ("state_dict_ema",)], ids=["both", "ema-only"])
def test_timm_training_checkpoints_load_their_weights(keys):
    model = created("efficientnet_b0")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = dx.load_checkpoint(saved({"epoch": 3, "arch": "efficientnet_b0", "optimizer": optimizer.state_dict(),
                                     **{k: model.state_dict() for k in keys}, "version": 2}))
    assert ckpt.format == "training_checkpoint" and ckpt.metadata["arch"] == "efficientnet_b0"
    assert dx.rebuild(ckpt).architecture == "timm efficientnet_b0"


def test_a_payload_beside_a_timm_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    data = saved({"state_dict": created("lcnet_050").state_dict(), "state_dict_ema": Exploit(str(marker))})
    with pytest.raises(dx.CheckpointError):
        dx.load_checkpoint(data)
    assert not marker.exists()


def test_the_shipped_index_is_for_the_installed_timm_and_its_entries_are_what_timm_builds():
    index, path = timm_index.load_index()
    assert path == timm_index.INDEX_FILE, "regenerate: python -m diagnostics.checkpoints.timm_index"
    assert index.timm == timm.__version__ and index.families == list(timm_index.FAMILIES)
    assert len(index.models) > 400
    for name in ("resnet50", "convnext_tiny", "deit_tiny_distilled_patch16_224", "densenet121"):
        shapes, head, _ = timm_index.model_shapes(name)
        assert index.models[name]["signature"] == timm_index.signature(shapes, head), name
        assert index.models[name]["head"] == list(head)


def test_recognition_among_all_indexed_models_is_fast_when_warm():
    shapes, _, _ = timm_index.model_shapes("swin_tiny_patch4_window7_224", num_classes=CLASSES)
    timm_index.recognise_timm(shapes)                                             # warm: index read once
    start = time.perf_counter()
    found = timm_index.recognise_timm(shapes)
    elapsed = time.perf_counter() - start
    print(f"warm timm recognition: {elapsed * 1000:.1f} ms among {len(timm_index.load_index()[0].models)} models")
    assert found.name == "swin_tiny_patch4_window7_224" and found.num_classes == CLASSES
    assert elapsed < 2.0


def test_another_timm_version_builds_its_index_per_family_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAGNOSTICS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(timm_index, "FAMILIES", {"densenet": ("densenet*",), "deit": ("deit*",)})
    monkeypatch.setattr(timm, "__version__", "0.0-test")
    shapes, _, _ = timm_index.model_shapes("densenet121")
    found = timm_index.recognise_timm(shapes)
    assert found.name == "densenet121" and found.family == "densenet"
    cached, path = timm_index.load_index()
    assert path == tmp_path / "timm-index-0.0-test.json" and cached.families == ["densenet"]   # deit not built
