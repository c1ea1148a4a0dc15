"""ReLU, Tanh, Sigmoid, Linear, BatchNorm1d/2d, Flatten and Identity: manual gradients against autograd."""

from __future__ import annotations

from itertools import product
from typing import Any

import pytest
import torch
from torch import nn

import diagnostics.manual as manual
from diagnostics.manual import activation, batchnorm, linear

from .support import assert_grads_close, assert_same_snapshot, autograd_grads, module_snapshot

IMPLS = ("fast", "reference")


def _check_against_autograd(module: nn.Module, x: torch.Tensor, impl: str) -> None:
    grad_output = torch.randn_like(module(x.clone()))
    snapshot = module_snapshot(module)
    grads = manual.backward(module, x, grad_output, impl=impl)
    assert_same_snapshot(snapshot, module_snapshot(module))
    assert_grads_close(grads, autograd_grads(module, x, grad_output))


# ---- Activations ----------------------------------------------------------------------------------------

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "relu-inplace": lambda: nn.ReLU(inplace=True),
    "tanh": lambda: nn.Tanh(),
    "sigmoid": lambda: nn.Sigmoid(),
}
SHAPES = {"batch": (4, 3, 5), "unbatched-vector": (7,), "scalar": (), "empty": (0, 3)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("make", ACTIVATIONS.values(), ids=ACTIVATIONS.keys())
def test_activation_matches_autograd(make, shape: tuple[int, ...], impl: str) -> None:
    _check_against_autograd(make(), 3 * torch.randn(shape, dtype=torch.float64), impl)


def test_relu_gradient_is_zero_at_zero_as_in_pytorch() -> None:
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    grad_output = torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.0, 7.0], dtype=torch.float64)
    torch.testing.assert_close(activation.relu_grad_input(x, grad_output), expected)
    torch.testing.assert_close(activation.relu_grad_input_reference(x, grad_output), expected)
    assert_grads_close(manual.backward(nn.ReLU(), x, grad_output), autograd_grads(nn.ReLU(), x, grad_output))


def test_inplace_relu_rule_uses_the_input_and_leaves_it_unchanged() -> None:
    x = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    grads = manual.backward(nn.ReLU(inplace=True), x, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(grads["input"], torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(x, torch.tensor([-1.0, 2.0], dtype=torch.float64))


def test_tanh_and_sigmoid_derivatives_by_hand() -> None:
    x = torch.tensor([0.0], dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(activation.tanh_grad_input(x, one), one)  # 1 - tanh(0)^2
    torch.testing.assert_close(activation.sigmoid_grad_input(x, one), one / 4)  # 1/2 * (1 - 1/2)
    torch.testing.assert_close(activation.sigmoid_grad_input_reference(torch.tensor([-800.0]).double(), one),
                               torch.zeros(1, dtype=torch.float64))


# ---- Linear ---------------------------------------------------------------------------------------------

LINEAR_CASES = {
    "2d": dict(shape=(5, 4), bias=True),
    "2d-nobias": dict(shape=(5, 4), bias=False),
    "unbatched": dict(shape=(4,), bias=True),
    "3d": dict(shape=(2, 3, 4), bias=True),
    "empty-batch": dict(shape=(0, 4), bias=True),
    "single": dict(shape=(1, 4), bias=False),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", LINEAR_CASES.values(), ids=LINEAR_CASES.keys())
def test_linear_matches_autograd(case: dict[str, Any], impl: str) -> None:
    module = nn.Linear(4, 3, bias=case["bias"]).double()
    _check_against_autograd(module, torch.randn(case["shape"], dtype=torch.float64), impl)


def test_linear_gradients_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)  # (1, 2)
    weight = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # (1, 2)
    grad_output = torch.tensor([[10.0]], dtype=torch.float64)  # (1, 1)
    grad_input = torch.tensor([[30.0, 40.0]], dtype=torch.float64)  # 10 * W
    grad_weight = torch.tensor([[10.0, 20.0]], dtype=torch.float64)  # 10 * x
    grad_bias = torch.tensor([10.0], dtype=torch.float64)
    torch.testing.assert_close(linear.linear_grad_input(x.shape, weight, grad_output), grad_input)
    torch.testing.assert_close(linear.linear_grad_weight(x, weight.shape, grad_output), grad_weight)
    torch.testing.assert_close(linear.linear_grad_bias(grad_output), grad_bias)
    reference = linear.linear_grads_reference(x, weight, grad_output)
    for actual, expected in zip(reference, (grad_input, grad_weight, grad_bias)):
        torch.testing.assert_close(actual, expected)


# ---- BatchNorm ------------------------------------------------------------------------------------------


def _batch_norm_grid() -> list[dict[str, Any]]:
    cases = []
    for cls, shape in ((nn.BatchNorm1d, (6, 3)), (nn.BatchNorm1d, (4, 3, 5)), (nn.BatchNorm2d, (3, 3, 4, 5))):
        for training, affine, track in product((True, False), (True, False), (True, False)):
            cases.append(dict(cls=cls, shape=shape, training=training, affine=affine, track_running_stats=track))
    cases.append(dict(cls=nn.BatchNorm2d, shape=(1, 3, 1, 2), training=True, affine=True, track_running_stats=True))
    cases.append(dict(cls=nn.BatchNorm2d, shape=(0, 3, 2, 2), training=False, affine=True, track_running_stats=True))
    cases.append(dict(cls=nn.BatchNorm2d, shape=(0, 3, 2, 2), training=True, affine=True, track_running_stats=False))
    return cases


def _batch_norm_id(case: dict[str, Any]) -> str:
    return (
        f"{case['cls'].__name__}-x{'x'.join(map(str, case['shape']))}-{'train' if case['training'] else 'eval'}-"
        f"{'affine' if case['affine'] else 'noaffine'}-{'track' if case['track_running_stats'] else 'notrack'}"
    )


def _build_batch_norm(case: dict[str, Any]) -> nn.Module:
    module = case["cls"](3, affine=case["affine"], track_running_stats=case["track_running_stats"]).double()
    with torch.no_grad():
        if case["affine"]:
            module.weight.normal_()
            module.bias.normal_()
        if case["track_running_stats"]:
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return module.train(case["training"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", _batch_norm_grid(), ids=_batch_norm_id)
def test_batch_norm_matches_autograd_and_keeps_running_stats(case: dict[str, Any], impl: str) -> None:
    module = _build_batch_norm(case)
    x = 2 + 3 * torch.randn(case["shape"], dtype=torch.float64)
    grad_output = torch.randn_like(x)
    snapshot = module_snapshot(module)
    grads = manual.backward(module, x, grad_output, impl=impl)
    assert_same_snapshot(snapshot, module_snapshot(module))  # running statistics included
    assert_grads_close(grads, autograd_grads(module, x, grad_output))


def test_batch_norm_rejects_a_single_value_per_channel_in_training() -> None:
    module = nn.BatchNorm1d(3).double()
    with pytest.raises(manual.ManualGradError, match="more than 1 value per channel"):
        manual.backward(module, torch.randn(1, 3, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64))


def test_batch_norm_gradients_by_hand() -> None:
    # Two values per channel: x_hat = -1, 1 (up to eps); dL/dx sums to zero and is orthogonal to x_hat.
    x = torch.tensor([[0.0], [2.0]], dtype=torch.float64)  # (2, 1)
    grad_output = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    grad_input = batchnorm.batch_norm_grad_input(x, None, None, None, grad_output, True, 0.0)
    torch.testing.assert_close(grad_input, torch.zeros(2, 1, dtype=torch.float64))  # 1 - 2 - (-1)(1) = 0
    grad_weight = batchnorm.batch_norm_grad_weight(x, None, None, grad_output, True, 0.0)
    torch.testing.assert_close(grad_weight, torch.tensor([2.0], dtype=torch.float64))  # -1*1 + 1*3


def test_batch_norm_forward_updating_matches_module_forward_step_for_step() -> None:
    ours, theirs = nn.BatchNorm2d(3, momentum=None).double(), nn.BatchNorm2d(3, momentum=None).double()
    for _ in range(3):
        x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
        state = {"weight": ours.weight, "bias": ours.bias}
        torch.testing.assert_close(batchnorm.batch_norm_forward_updating(ours, x, state), theirs(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=0, atol=0)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3


# ---- Flatten and Identity -------------------------------------------------------------------------------

SHAPE_LAYERS = {
    "flatten": (lambda: nn.Flatten(), (2, 3, 4, 5)),
    "flatten-0-to-2": (lambda: nn.Flatten(0, 2), (2, 3, 4, 5)),
    "flatten-2-to-last": (lambda: nn.Flatten(2), (2, 3, 4, 5)),
    "flatten-empty": (lambda: nn.Flatten(), (0, 3, 4)),
    "identity": (lambda: nn.Identity(), (2, 3)),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("make, shape", SHAPE_LAYERS.values(), ids=SHAPE_LAYERS.keys())
def test_shape_layer_matches_autograd(make, shape: tuple[int, ...], impl: str) -> None:
    _check_against_autograd(make(), torch.randn(shape, dtype=torch.float64), impl)
