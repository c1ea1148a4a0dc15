"""Safe checkpoint loading: every supported format round-trips; unsafe, corrupt and foreign files are refused."""

from __future__ import annotations

import argparse
import io
import os
import pickle
import random
import sys
import types
import zipfile

import pytest
import torch
import torchvision
from torch import nn

import diagnostics as dx
from diagnostics.checkpoints.architecture import match_torchvision, weight_summary
from diagnostics.checkpoints.loading import detect_format, load_checkpoint


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def small_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def same_outputs(a: nn.Module, b: nn.Module, shape) -> None:
    a.eval()
    b.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


# --- formats ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_training_checkpoints_hold_their_state_dict_under_common_keys(key):
    net = small_net()
    data = saved({key: net.state_dict(), "epoch": 7, "optimizer": torch.optim.SGD(net.parameters(), 0.1).state_dict(),
                  "args": argparse.Namespace(lr=0.1, depth=3)})
    ckpt = load_checkpoint(data)
    assert ckpt.format == "training_checkpoint"
    assert set(ckpt.state_dict) == set(net.state_dict())
    assert ckpt.metadata["epoch"] == 7 and ckpt.metadata["args"] == {"lr": 0.1, "depth": 3}
    assert "not loaded" in ckpt.metadata["optimizer"]


def test_plain_state_dict_and_ddp_prefix_are_recognised():
    net = small_net()
    plain = load_checkpoint(saved(net.state_dict()))
    ddp = load_checkpoint(saved({f"module.{k}": v for k, v in net.state_dict().items()}))
    assert plain.format == ddp.format == "state_dict"
    assert ddp.stripped_prefix == "module." and set(ddp.state_dict) == set(net.state_dict())


def test_lightning_checkpoint_with_hyper_parameters_loads_through_the_allowlist(tmp_path):
    # A stand-in for Lightning's AttributeDict, pickled under Lightning's real module path; the loader never
    # imports that module: the allowlist maps the name to a plain dict.
    module = types.ModuleType("lightning.fabric.utilities.data")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = module.__name__
    AttributeDict.__qualname__ = "AttributeDict"
    module.AttributeDict = AttributeDict
    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]
    for name in names:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["lightning.fabric.utilities.data"] = module
    try:
        net = small_net()
        data = saved({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
                      "hyper_parameters": AttributeDict(lr=0.01, width=4), "epoch": 2, "global_step": 100,
                      "pytorch-lightning_version": "2.5.0"})
    finally:
        for name in names:
            sys.modules.pop(name, None)
    path = tmp_path / "lightning.ckpt"
    path.write_bytes(data)
    ckpt = load_checkpoint(path)
    assert ckpt.format == "training_checkpoint" and ckpt.stripped_prefix == "model."
    assert ckpt.metadata["hyper_parameters"] == {"lr": 0.01, "width": 4}
    model = small_net()
    model.load_state_dict(ckpt.state_dict)


def write_safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def test_safetensors_written_by_the_official_package_are_read_without_it():
    net = small_net()
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    tensors["extra.bf16"] = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    tensors["extra.scalar"] = torch.tensor(3.5)
    data = write_safetensors(tensors)
    assert detect_format(data) == "safetensors"
    ckpt = load_checkpoint(data)
    assert ckpt.format == "safetensors"
    for key, value in tensors.items():
        torch.testing.assert_close(ckpt.state_dict[key], value)


def test_project_checkpoints_rebuild_their_architecture(tmp_path):
    config = dx.variant_config("residual+batchnorm", depth=4, width=6)
    model = dx.build_cnn(config, seed=3)
    dx.save_checkpoint(model, config, tmp_path / "cnn.pt", extra={"step": 10})
    ckpt = load_checkpoint(tmp_path / "cnn.pt")
    assert ckpt.format == "project_checkpoint" and ckpt.architecture == config.to_dict()
    built = dx.rebuild(ckpt)
    assert "residual+batchnorm" in built.architecture and built.input_shape == (1, 8, 8)
    same_outputs(model, built.model, (2, 1, 8, 8))


TORCHVISION = {"resnet18": (3, 64, 64), "vgg11_bn": (3, 32, 32), "densenet121": (3, 32, 32),
               "mobilenet_v3_small": (3, 32, 32)}


@pytest.mark.parametrize("prefix", ["", "module."], ids=["plain", "ddp-prefix"])
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_state_dicts_round_trip(name, prefix, tmp_path):
    model = torchvision.models.get_model(name, weights=None, num_classes=7)
    path = tmp_path / "weights.pt"
    torch.save({f"{prefix}{k}": v for k, v in model.state_dict().items()}, path)
    ckpt = load_checkpoint(path)
    built = dx.rebuild(ckpt)
    assert built.architecture == name
    same_outputs(model, built.model, (1, *TORCHVISION[name]))
    assert dx.build_model(ckpt).__class__ is model.__class__


def test_an_unknown_architecture_names_the_closest_candidates_and_keeps_weight_views():
    model = torchvision.models.resnet18(num_classes=5)
    state = dict(model.state_dict())
    state.pop("layer4.1.conv2.weight")
    state["extra.weight"] = torch.ones(3, 3)
    ckpt = load_checkpoint(saved(state))
    with pytest.raises(dx.CheckpointError, match="Closest: resnet18") as info:
        dx.build_model(ckpt)
    assert "layer4.1.conv2.weight" in str(info.value)
    assert match_torchvision(ckpt.state_dict)[0].name == "resnet18"
    summary = weight_summary(ckpt.state_dict)
    assert len(summary) == sum(1 for t in state.values() if t.is_floating_point())
    torch.testing.assert_close(float(summary.set_index("param").loc["conv1.weight", "norm"]),
                               float(state["conv1.weight"].double().norm()))


# --- refusals -----------------------------------------------------------------------------------------------

class Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class OpenExploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("exploit", [Exploit, OpenExploit], ids=["os.system", "builtins.open"])
@pytest.mark.parametrize("wrap", ["bare", "in-state-dict"])
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, exploit, wrap):
    target = tmp_path / "pwned"
    payload = exploit(str(target))
    data = saved(payload if wrap == "bare" else {"state_dict": {"w": torch.ones(1)}, "evil": payload})
    with pytest.raises(dx.CheckpointError):
        load_checkpoint(data)
    assert not target.exists()


def test_a_full_model_pickle_is_refused_with_advice():
    with pytest.raises(dx.CheckpointError, match=r"whole pickled model.*state_dict\(\)"):
        load_checkpoint(saved(small_net()))


def test_torchscript_is_refused_by_default_and_loads_when_allowed():
    data = io.BytesIO()
    torch.jit.save(torch.jit.script(small_net()), data)
    with pytest.raises(dx.CheckpointError, match="TorchScript"):
        load_checkpoint(data.getvalue())
    ckpt = load_checkpoint(data.getvalue(), allow_torchscript=True)
    assert ckpt.format == "torchscript" and "0.weight" in ckpt.state_dict


def test_bare_pickles_and_unknown_formats_are_refused():
    with pytest.raises(dx.CheckpointError, match="bare pickle"):
        load_checkpoint(pickle.dumps({"w": [1, 2, 3]}, protocol=4))
    with pytest.raises(dx.CheckpointError, match="not a format we know"):
        load_checkpoint(b"hello, this is a text file\n")


def test_empty_missing_and_oversized_files(tmp_path):
    with pytest.raises(dx.CheckpointError, match="empty"):
        load_checkpoint(b"")
    with pytest.raises(dx.CheckpointError, match="no file"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "big.pt").write_bytes(saved(small_net().state_dict()))
    with pytest.raises(dx.CheckpointError, match="limit"):
        load_checkpoint(tmp_path / "big.pt", max_bytes=100)


def test_dicts_without_weights_say_where_weights_are_expected():
    with pytest.raises(dx.CheckpointError, match="without model weights"):
        load_checkpoint(saved({"epoch": 3, "note": "nothing here"}))
    with pytest.raises(dx.CheckpointError, match="not model weights"):
        load_checkpoint(saved([1, 2, 3]))


def fuzz_cases(n: int = 300):
    rng = random.Random(1234)
    good = [saved(small_net().state_dict()), write_safetensors({"w": torch.ones(4, 4)}),
            saved({"state_dict": small_net().state_dict(), "epoch": 1})]
    cases = []
    for i in range(n):
        base = good[i % len(good)]
        kind = i % 4
        if kind == 0:
            data = base[:rng.randrange(0, len(base))]                       # truncated
        elif kind == 1:
            data = bytearray(base)
            for _ in range(rng.randrange(1, 40)):
                data[rng.randrange(len(data))] = rng.randrange(256)         # corrupted bytes
            data = bytes(data)
        elif kind == 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000)))   # random
        else:
            data = base[:8] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 500)))  # right magic
        cases.append(data)
    return cases


def test_hundreds_of_fuzzed_files_give_checkpoint_errors_only():
    outcomes = {"refused": 0, "loaded": 0}
    for data in fuzz_cases():
        try:
            ckpt = load_checkpoint(data)
        except dx.CheckpointError:
            outcomes["refused"] += 1
        else:
            # A corruption inside tensor data can leave a valid file: then it must be a real checkpoint.
            assert ckpt.state_dict and all(isinstance(v, torch.Tensor) for v in ckpt.state_dict.values())
            outcomes["loaded"] += 1
    assert outcomes["refused"] >= 200


def test_a_zip_that_is_not_a_checkpoint_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(dx.CheckpointError):
        load_checkpoint(buf.getvalue())
