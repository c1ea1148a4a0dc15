"""manual.network_backward: a full manual backward pass through Sequential and Residual networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diagnostics.manual as manual
from diagnostics.manual import Residual

from .support import assert_close_rel, assert_same_snapshot, module_snapshot


def plain_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding="same"), nn.Tanh(), nn.Conv2d(6, 6, 3, padding=1, groups=2)),
        nn.Sigmoid(),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.Conv2d(6, 4, 1), nn.ReLU(),
        nn.Conv2d(4, 4, 2, stride=1, bias=False),
        nn.Flatten(), nn.Linear(4, 3),
    )


def residual_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))),
        nn.ReLU(),
        Residual(
            nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1)),
            shortcut=nn.Conv2d(4, 6, 1, stride=2),
        ),
        nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.Tanh())),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def batch_norm_cnn() -> nn.Sequential:
    return nn.Sequential(
        _conv_bn_relu(3, 4),
        _conv_bn_relu(4, 4),
        Residual(nn.Sequential(_conv_bn_relu(4, 4), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))),
        _conv_bn_relu(4, 6, stride=2),
        _conv_bn_relu(6, 6),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


NETWORKS = {
    "plain": (plain_cnn, True),
    "residual": (residual_cnn, True),
    "batchnorm-train": (batch_norm_cnn, True),
    "batchnorm-eval": (batch_norm_cnn, False),
}


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("make, training", NETWORKS.values(), ids=NETWORKS.keys())
def test_network_backward_matches_autograd(make, training: bool, impl: str) -> None:
    model = make().double().train(training)
    if not training:
        model(torch.randn(8, 3, 8, 8, dtype=torch.float64))  # non-trivial running statistics, then eval
        model.eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    output = model(leaf.clone())
    grad_output = torch.randn_like(output)
    expected = torch.autograd.grad(output, [leaf, *model.parameters()], grad_output)
    before = module_snapshot(model)

    grads = manual.network_backward(model, x, grad_output, impl=impl)

    assert_same_snapshot(before, module_snapshot(model))  # running statistics included
    assert_close_rel(grads["input"], expected[0])
    assert list(grads["parameters"]) == [name for name, _ in model.named_parameters()]
    # A convolution's bias followed by batch norm has a gradient of zero up to rounding: its errors are
    # measured against 1e-3 of the network's largest gradient, as manual.check does per layer.
    floor = 1e-3 * max(float(g.abs().max()) for g in expected)
    for actual, wanted in zip(grads["parameters"].values(), expected[1:]):
        assert_close_rel(actual, wanted, floor=floor)


def test_network_has_six_or_more_convolutions() -> None:
    for make, _ in NETWORKS.values():
        assert sum(isinstance(m, nn.Conv2d) for m in make().modules()) >= 6


def test_network_backward_sums_the_gradients_of_a_shared_layer() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Tanh(), shared).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    grad_output = torch.randn(4, 3, dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    expected = torch.autograd.grad(model(leaf), [leaf, shared.weight, shared.bias], grad_output)
    grads = manual.network_backward(model, x, grad_output)
    assert list(grads["parameters"]) == ["0.weight", "0.bias"]
    assert_close_rel(grads["input"], expected[0])
    assert_close_rel(grads["parameters"]["0.weight"], expected[1])
    assert_close_rel(grads["parameters"]["0.bias"], expected[2])


def test_residual_forward_is_body_plus_shortcut() -> None:
    block = Residual(nn.Linear(2, 2), shortcut=nn.Linear(2, 2))
    x = torch.randn(3, 2)
    torch.testing.assert_close(block(x), block.body(x) + block.shortcut(x))
    assert isinstance(Residual(nn.Identity()).shortcut, nn.Identity)


def test_network_backward_names_an_unsupported_layer() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Dropout()))
    with pytest.raises(manual.UnsupportedModuleError, match=r"layer 1\.1: no manual backward rule for Dropout"):
        manual.network_backward(model, torch.randn(2, 2), torch.randn(2, 2))


def test_network_backward_refuses_other_containers() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) * 2

    with pytest.raises(manual.UnsupportedModuleError, match="Custom.*containers: Sequential, Residual"):
        manual.network_backward(nn.Sequential(Custom()), torch.randn(2, 2), torch.randn(2, 2))


def test_network_backward_reports_a_residual_shape_mismatch() -> None:
    model = nn.Sequential(Residual(nn.Linear(2, 3)))
    with pytest.raises(manual.ManualGradError, match=r"Residual 0: body output \(4, 3\) and shortcut output \(4, 2\)"):
        manual.network_backward(model, torch.randn(4, 2), torch.randn(4, 3))


def test_network_backward_reports_a_wrong_grad_output() -> None:
    with pytest.raises(manual.ManualGradError, match=r"grad_output has shape \(4, 2\).*output of shape \(4, 3\)"):
        manual.network_backward(nn.Sequential(nn.Linear(2, 3)), torch.randn(4, 2), torch.randn(4, 2))


def test_network_backward_reports_a_layer_that_does_not_fit() -> None:
    with pytest.raises(manual.ManualGradError, match="in_features=5"):
        manual.network_backward(nn.Sequential(nn.Linear(2, 3), nn.Linear(5, 1)), torch.randn(4, 2), torch.randn(4, 1))
