"""The CNN family: switches build what they say, seeded init shared across variants, checkpoints that rebuild."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import diagnostics as dx
from diagnostics.checkpoints.architecture import load_project_checkpoint
from diagnostics.experiments.models import (
    CHECKPOINT_FORMAT, VARIANTS, CNNConfig, ConvBlock, ModelConfigError, _init_layer, build_cnn, conv_layer_names,
    save_checkpoint, variant_config,
)


def small(variant: str = "plain", **overrides) -> CNNConfig:
    return variant_config(variant, **{"depth": 4, "width": 6, "input_size": 8, **overrides})


# --- switches ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_variant_switches_build_what_they_say(variant):
    residual, batchnorm = VARIANTS[variant]
    model = build_cnn(small(variant))
    blocks = list(model.blocks)
    assert model.config.variant == variant
    assert [b.residual for b in blocks] == [False] + [residual] * 3      # the stem never has a skip
    assert all((b.bn is not None) == batchnorm for b in blocks)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batchnorm


@pytest.mark.parametrize("batchnorm", [False, True], ids=["no-bn", "bn"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_a_block_computes_act_of_bn_conv_plus_its_input(residual, batchnorm):
    config = CNNConfig(depth=2, width=5, residual=residual, batchnorm=batchnorm)
    block = ConvBlock(5, 5, config, residual=residual)
    x = torch.randn(3, 5, 6, 6)                                       # (N, C, H, W)
    h = block.conv(x)                                                 # (N, C, H, W)
    if batchnorm:
        h = nn.functional.batch_norm(h, None, None, block.bn.weight, block.bn.bias, training=True)
    expected = torch.relu(h + x if residual else h)                   # (N, C, H, W)
    torch.testing.assert_close(block(x), expected)


def test_residual_block_with_zero_conv_passes_its_input_through():
    block = ConvBlock(4, 4, CNNConfig(depth=2, width=4, residual=True), residual=True)
    nn.init.zeros_(block.conv.weight)
    nn.init.zeros_(block.conv.bias)
    x = torch.rand(2, 4, 5, 5)                                        # non-negative, so relu(x) == x
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("depth", [2, 7, 100], ids=["d2", "d7", "d100"])
def test_depth_counts_conv_layers_in_execution_order(depth):
    model = build_cnn(small(depth=depth, width=2))
    names = conv_layer_names(model)
    assert names == [f"blocks.{i}.conv" for i in range(depth)]
    order = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
               for n, m in model.named_modules() if n in names]
    model(torch.randn(1, 1, 8, 8))
    for h in handles:
        h.remove()
    assert order == names


@pytest.mark.parametrize("activation,cls", [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid)],
                         ids=["relu", "tanh", "sigmoid"])
def test_activation_switch(activation, cls):
    model = build_cnn(small(activation=activation))
    assert all(type(b.act) is cls for b in model.blocks)


@pytest.mark.parametrize("dims,conv,norm,shape", [
    (2, nn.Conv2d, nn.BatchNorm2d, (3, 2, 8, 8)),
    (1, nn.Conv1d, nn.BatchNorm1d, (3, 2, 8)),
], ids=["2d-images", "1d-signals"])
def test_one_and_two_dimensional_families(dims, conv, norm, shape):
    model = build_cnn(small("residual+batchnorm", dims=dims, in_channels=2, num_classes=5))
    assert isinstance(model.blocks[0].conv, conv) and isinstance(model.blocks[1].bn, norm)
    assert model(torch.randn(*shape)).shape == (3, 5)


def test_wrong_input_shape_is_a_clear_error():
    model = build_cnn(small())
    with pytest.raises(ModelConfigError, match=r"expected input of shape \(N, C, H, W\) with C=1"):
        model(torch.randn(2, 3, 8, 8))
    assert model.training


# --- initialisation ------------------------------------------------------------------------------------------

def test_default_init_is_pytorchs_own():
    torch.manual_seed(123)
    reference = nn.Conv2d(4, 6, 3, padding=1)                          # reset_parameters with the global RNG
    mine = nn.Conv2d(4, 6, 3, padding=1)
    _init_layer(mine, "default", "relu", torch.Generator().manual_seed(123))
    torch.testing.assert_close(mine.weight, reference.weight, rtol=0, atol=0)
    torch.testing.assert_close(mine.bias, reference.bias, rtol=0, atol=0)


@pytest.mark.parametrize("init,activation,expected_std", [
    ("he", "relu", math.sqrt(2.0 / (64 * 9))),
    ("he", "tanh", 5 / 3 / math.sqrt(64 * 9)),
    ("xavier", "relu", math.sqrt(2.0 / (64 * 9 + 64 * 9))),             # gain 1 whatever the activation
    ("xavier", "tanh", math.sqrt(2.0 / (64 * 9 + 64 * 9))),
    ("orthogonal", "relu", math.sqrt(2.0) / math.sqrt(64 * 9)),          # unit rows of 576 entries, times √2
    ("default", "relu", 1.0 / math.sqrt(3 * 64 * 9)),
], ids=["he-relu", "he-tanh", "xavier-relu", "xavier-tanh", "orthogonal-relu", "default"])
def test_init_scales(init, activation, expected_std):
    conv = nn.Conv2d(64, 64, 3)
    _init_layer(conv, init, activation, torch.Generator().manual_seed(0))
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.03)
    assert (conv.bias.abs().max().item() == 0.0) == (init != "default")


def test_same_seed_same_initial_weights_for_the_shared_parts_of_every_variant():
    models = {v: build_cnn(small(v), seed=7) for v in VARIANTS}
    plain = models.pop("plain")
    for model in models.values():
        for i in range(4):
            torch.testing.assert_close(model.blocks[i].conv.weight, plain.blocks[i].conv.weight, rtol=0, atol=0)
        torch.testing.assert_close(model.head.weight, plain.head.weight, rtol=0, atol=0)


def test_another_seed_gives_other_weights_and_the_global_rng_is_untouched():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a, b = build_cnn(small(), seed=0), build_cnn(small(), seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert not torch.equal(a.blocks[1].conv.weight, b.blocks[1].conv.weight)


# --- configuration ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("depth", 1, "depth must be an integer from 2 to 100"),
    ("depth", 101, "depth must be an integer from 2 to 100"),
    ("activation", "gelu", "activation must be one of"),
    ("init", "lecun", "init must be one of"),
    ("dims", 3, "dims must be 1"),
    ("num_classes", 1, "num_classes must be at least 2"),
    ("kernel_size", 4, "kernel_size must be a positive odd integer"),
    ("pool_size", 9, "pool_size must be a positive integer no larger than input_size"),
], ids=["depth-1", "depth-101", "activation", "init", "dims", "classes", "kernel", "pool"])
def test_invalid_config_names_the_field(field, value, message):
    with pytest.raises(ModelConfigError, match=message) as info:
        CNNConfig(**{field: value})
    assert isinstance(info.value, ValueError) and isinstance(info.value, dx.DiagnosticsError)


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ModelConfigError, match="unknown variant 'resnet'") as info:
        variant_config("resnet")
    assert "residual+batchnorm" in str(info.value)


def test_config_round_trips_through_a_dict_and_rejects_unknown_keys():
    config = small("residual", activation="tanh", init="xavier")
    assert CNNConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ModelConfigError, match=r"unknown CNNConfig fields \['colour'\]"):
        CNNConfig.from_dict({**config.to_dict(), "colour": "red"})
    assert config.variant == "residual"


# --- checkpoints --------------------------------------------------------------------------------------------

def _plain_types_only(obj) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain_types_only(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain_types_only(v) for v in obj)
    return obj is None or isinstance(obj, (str, int, float, bool, torch.Tensor))


@pytest.mark.parametrize("variant,dims", [("residual+batchnorm", 2), ("batchnorm", 1), ("plain", 2)],
                         ids=["residual-bn-2d", "bn-1d", "plain-2d"])
def test_checkpoint_rebuilds_the_same_network(tmp_path, variant, dims):
    config = small(variant, dims=dims, activation="tanh")
    model = build_cnn(config, seed=3)
    x = torch.randn(4, 1, *([8] * dims))
    model(x).sum().backward()                                         # batch norm running stats move
    model.eval()
    path = tmp_path / "model.pt"
    save_checkpoint(model, config, path, extra={"step": 5, "run": "r1"})

    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and _plain_types_only(raw)
    loaded = load_project_checkpoint(path)
    assert loaded.config == config and loaded.extra == {"step": 5, "run": "r1"}
    loaded.model.eval()
    torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)


def test_checkpoint_of_a_ddp_wrapper_saves_the_inner_model(tmp_path):
    config = small()
    model = build_cnn(config)
    wrapper = nn.Module()
    wrapper.module = model                                            # what DistributedDataParallel looks like
    save_checkpoint(wrapper, config, tmp_path / "m.pt")
    assert set(load_project_checkpoint(tmp_path / "m.pt").model.state_dict()) == set(model.state_dict())


def test_checkpoint_errors(tmp_path):
    with pytest.raises(dx.CheckpointError, match="no checkpoint file"):
        load_project_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(dx.CheckpointError, match="not a checkpoint of this project"):
        load_project_checkpoint(tmp_path / "other.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")              # a pickled class: refused, never run
    with pytest.raises(dx.CheckpointError, match="could not be loaded safely"):
        load_project_checkpoint(tmp_path / "pickled.pt")
    config = small()
    save_checkpoint(build_cnn(config), config, tmp_path / "ok.pt")
    payload = torch.load(tmp_path / "ok.pt", weights_only=True)
    payload["config"]["depth"] = 5
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(dx.CheckpointError, match="the recorded architecture does not fit the file.s weights"):
        load_project_checkpoint(tmp_path / "mismatch.pt")
    payload["config"]["depth"] = 0
    torch.save(payload, tmp_path / "invalid.pt")
    with pytest.raises(dx.CheckpointError, match="recorded architecture is invalid"):
        load_project_checkpoint(tmp_path / "invalid.pt")
    assert load_project_checkpoint(tmp_path / "ok.pt").config == config


def test_batch_norm_after_the_activation_normalises_the_activation_output():
    config = variant_config("batchnorm", depth=3, width=4, bn_position="after")
    model = build_cnn(config, seed=0)
    block = model.blocks[1]
    x = torch.randn(5, 4, 8, 8)
    expected = block.bn(block.act(block.conv(x)))                    # conv -> act -> bn
    torch.testing.assert_close(block(x), expected)
    assert CNNConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "bn_position"}).bn_position \
        == "before"                                                  # older checkpoints keep their order


def test_batch_norm_after_the_activation_is_refused_in_residual_blocks():
    with pytest.raises(ModelConfigError, match="bn_position='after' is for plain networks"):
        variant_config("residual+batchnorm", bn_position="after")
