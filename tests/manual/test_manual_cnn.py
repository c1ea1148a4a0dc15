"""manual.network_backward through the project's own CNN family (diagnostics.experiments.models), every variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diagnostics.manual as manual
from diagnostics.experiments.models import ACTIVATIONS, VARIANTS, CNN, ConvBlock, build_cnn, variant_config

from .support import assert_close_rel, assert_same_snapshot, module_snapshot

IN_CHANNELS, SIZE, BATCH = 2, 6, 3


def small_cnn(variant: str, activation: str, dims: int, depth: int = 3) -> CNN:
    config = variant_config(variant, depth=depth, width=4, activation=activation, dims=dims,
                            in_channels=IN_CHANNELS, num_classes=3, input_size=SIZE, pool_size=2)
    return build_cnn(config, seed=1).double()


def random_input(dims: int, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, IN_CHANNELS, *(SIZE,) * dims, generator=generator, dtype=torch.float64)  # (N, C, *S)


def autograd_network(model: nn.Module, x: torch.Tensor, grad_output: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The twin of ``network_backward``: ``(dL/dx, *dL/dparams)`` by autograd, parameters in named order."""
    leaf = x.clone().requires_grad_(True)
    return torch.autograd.grad(model(leaf), [leaf, *model.parameters()], grad_output)


def assert_network_grads_match(model: nn.Module, x: torch.Tensor, impl: str = "fast") -> None:
    output = model(x)  # (N, num_classes)
    grad_output = torch.randn(output.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = autograd_network(model, x, grad_output)
    before = module_snapshot(model)

    grads = manual.network_backward(model, x, grad_output, impl=impl)

    assert_same_snapshot(before, module_snapshot(model))  # running statistics and training flags included
    assert list(grads["parameters"]) == [name for name, _ in model.named_parameters()]
    assert_close_rel(grads["input"], expected[0])
    # A conv bias followed by batch norm has a gradient of zero up to rounding: errors are measured against
    # 1e-3 of the network's largest gradient, as manual.check does per layer.
    floor = 1e-3 * max(float(g.abs().max()) for g in expected)
    for (name, actual), wanted in zip(grads["parameters"].items(), expected[1:]):
        assert actual.shape == wanted.shape, name
        assert_close_rel(actual, wanted, floor=floor)


CASES = [
    pytest.param(variant, activation, dims, impl, id=f"{variant}-{activation}-{dims}d-{impl}")
    for variant in VARIANTS
    for activation in ACTIVATIONS
    for dims in (1, 2)
    for impl in manual.IMPLS
]


@pytest.mark.parametrize("variant, activation, dims, impl", CASES)
def test_cnn_backward_matches_autograd_in_training_mode(variant: str, activation: str, dims: int, impl: str) -> None:
    model = small_cnn(variant, activation, dims)
    assert model.training
    assert_network_grads_match(model, random_input(dims), impl)


@pytest.mark.parametrize("variant", ["batchnorm", "residual+batchnorm"])
@pytest.mark.parametrize("dims", [1, 2], ids=["1d", "2d"])
def test_cnn_backward_matches_autograd_in_eval_mode_with_running_statistics(variant: str, dims: int) -> None:
    model = small_cnn(variant, "relu", dims)
    with torch.no_grad():
        model(random_input(dims, batch=8, seed=3) * 2 + 1)  # non-trivial running statistics
    model.eval()
    assert_network_grads_match(model, random_input(dims))


@pytest.mark.parametrize("depth", [2, 5], ids=["depth2", "depth5"])
def test_cnn_backward_at_other_depths(depth: int) -> None:
    assert_network_grads_match(small_cnn("residual+batchnorm", "tanh", 2, depth=depth), random_input(2))


def test_cnn_backward_with_a_batch_of_one_in_eval_mode() -> None:
    model = small_cnn("residual", "sigmoid", 2).eval()
    assert_network_grads_match(model, random_input(2, batch=1))


def test_cnn_inside_a_sequential_is_walked_too() -> None:
    cnn = small_cnn("residual", "relu", 2)
    model = nn.Sequential(nn.Identity(), cnn, nn.Tanh())
    assert_network_grads_match(model, random_input(2))
    grads = manual.network_backward(model, random_input(2), torch.ones(BATCH, 3, dtype=torch.float64))
    assert "1.blocks.0.conv.weight" in grads["parameters"]


def test_residual_block_adds_the_skip_gradient_to_the_branch() -> None:
    """With a zero conv, the branch passes no gradient: dL/dx is the skip path's alone, tanh'(x) * dL/dy."""
    config = variant_config("residual", depth=2, width=3, activation="tanh")
    block = ConvBlock(3, 3, config, residual=True).double()
    nn.init.zeros_(block.conv.weight)
    nn.init.zeros_(block.conv.bias)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)  # (N, C, H, W)
    grad_output = torch.randn(2, 3, 5, 5, dtype=torch.float64)  # (N, C, H, W)

    grads = manual.network_backward(block, x, grad_output)

    assert_close_rel(grads["input"], (1 - torch.tanh(x) ** 2) * grad_output)
    plain = ConvBlock(3, 3, config, residual=False).double()
    plain.load_state_dict(block.state_dict())
    assert_close_rel(manual.network_backward(plain, x, grad_output)["input"], torch.zeros_like(x))


def test_cnn_backward_refuses_an_input_of_the_wrong_layout() -> None:
    model = small_cnn("plain", "relu", 2)
    x = torch.randn(BATCH, IN_CHANNELS + 1, SIZE, SIZE, dtype=torch.float64)
    with pytest.raises(manual.ManualGradError, match=r"CNN \(root\) expects an input of shape \(N, C, H, W\) with C=2"):
        manual.network_backward(model, x, torch.zeros(BATCH, 3, dtype=torch.float64))
    assert model.training


def test_a_subclass_of_cnn_is_refused_by_name() -> None:
    class ScaledCNN(CNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    model = ScaledCNN(small_cnn("plain", "relu", 2).config).double()
    message = r"no manual backward rule for ScaledCNN.*CNN and ConvBlock"
    with pytest.raises(manual.UnsupportedModuleError, match=message):
        manual.network_backward(model, random_input(2), torch.zeros(BATCH, 3, dtype=torch.float64))
    assert type(model) is ScaledCNN


def test_an_unsupported_layer_inside_a_cnn_is_named_with_its_path() -> None:
    model = small_cnn("plain", "relu", 2)
    model.blocks[1].act = nn.GELU()
    with pytest.raises(manual.UnsupportedModuleError, match=r"layer blocks\.1\.act: no manual backward rule for GELU"):
        manual.network_backward(model, random_input(2), torch.zeros(BATCH, 3, dtype=torch.float64))
    assert isinstance(model.blocks[1].act, nn.GELU)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_check_model_passes_every_layer_of_the_project_cnn(variant: str) -> None:
    model = small_cnn(variant, "relu", 2).float()
    report = manual.check_model(model, random_input(2).float())
    assert (report.status == "pass").all(), report.to_string()
    convs = report[report.layer.str.endswith(".conv")]
    assert convs.layer.unique().tolist() == ["blocks.0.conv", "blocks.1.conv", "blocks.2.conv"]
    assert set(report.layer) >= {"pool", "head"}


@pytest.mark.parametrize("impl", manual.IMPLS)
@pytest.mark.parametrize("dims", [1, 2], ids=["1d", "2d"])
def test_cnn_backward_with_batch_norm_after_the_activation(dims: int, impl: str) -> None:
    config = variant_config("batchnorm", depth=3, width=4, dims=dims, bn_position="after", in_channels=IN_CHANNELS,
                            num_classes=3, input_size=SIZE, pool_size=2)
    assert_network_grads_match(build_cnn(config, seed=1).double(), random_input(dims), impl)
