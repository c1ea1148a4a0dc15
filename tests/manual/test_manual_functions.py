"""The autograd Function wrappers and use_manual_backward: gradcheck, training curves, exact restoration."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import diagnostics.manual as manual
from diagnostics.manual import ManualBackwardFunction, rule_for

from .support import assert_same_snapshot, module_snapshot

GRADCHECK_LAYERS = {
    "conv1d-reflect": (lambda: nn.Conv1d(2, 2, 3, stride=2, padding=1, padding_mode="reflect"), (2, 2, 5)),
    "conv2d-groups": (
        lambda: nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2), (2, 2, 5, 4)
    ),
    "conv2d-nobias": (lambda: nn.Conv2d(2, 2, 3, padding="same", padding_mode="circular", bias=False), (1, 2, 4, 4)),
    "conv-transpose2d": (lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1), (1, 2, 3, 3)),
    "maxpool1d": (lambda: nn.MaxPool1d(3, 2, 1), (2, 2, 6)),
    "maxpool2d": (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 2, 5, 5)),
    "avgpool1d": (lambda: nn.AvgPool1d(3, 2, 1, ceil_mode=True), (2, 2, 6)),
    "avgpool2d": (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 2, 5, 5)),
    "adaptive-avgpool1d": (lambda: nn.AdaptiveAvgPool1d(4), (2, 2, 6)),
    "adaptive-avgpool2d": (lambda: nn.AdaptiveAvgPool2d(3), (2, 2, 5, 4)),
    "adaptive-maxpool2d": (lambda: nn.AdaptiveMaxPool2d(2), (2, 2, 5, 4)),
    "relu": (lambda: nn.ReLU(), (3, 4)),
    "tanh": (lambda: nn.Tanh(), (3, 4)),
    "sigmoid": (lambda: nn.Sigmoid(), (3, 4)),
    "linear": (lambda: nn.Linear(4, 3), (3, 4)),
    "batchnorm1d-train": (lambda: nn.BatchNorm1d(3), (4, 3)),
    "batchnorm2d-eval": (lambda: nn.BatchNorm2d(2).eval(), (2, 2, 3, 3)),
    "batchnorm2d-train-noaffine": (lambda: nn.BatchNorm2d(2, affine=False), (2, 2, 3, 3)),
    "flatten": (lambda: nn.Flatten(), (2, 3, 2)),
    "identity": (lambda: nn.Identity(), (2, 3)),
}


@pytest.mark.parametrize("make, shape", GRADCHECK_LAYERS.values(), ids=GRADCHECK_LAYERS.keys())
def test_gradcheck_of_the_manual_function(make, shape) -> None:
    module = make().double()
    rule = rule_for(module)
    x = torch.randn(shape, dtype=torch.float64)
    x = x + 0.1 * torch.sign(x)  # away from ReLU's kink; random values keep max-pool windows without ties
    params = [getattr(module, name) for name in rule.params]
    inputs = (x.requires_grad_(True), *[p.detach().clone().requires_grad_(True) for p in params if p is not None])

    def function(x: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        it = iter(tensors)
        args = [None if p is None else next(it) for p in params]
        return ManualBackwardFunction.apply(module, rule, x, *args)

    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def _small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 4),
    )


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, manual_backward: bool, steps: int = 100) -> torch.Tensor:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        if manual_backward:
            with manual.use_manual_backward(model):
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
        else:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-9), (torch.float32, 2e-4)], ids=["float64", "float32"])
def test_training_with_the_manual_backward_gives_the_autograd_loss_curve(dtype: torch.dtype, rtol: float) -> None:
    model = _small_cnn().to(dtype)
    x = torch.randn(16, 3, 8, 8, dtype=dtype)
    y = torch.randint(0, 4, (16,))
    autograd_model, manual_model = copy.deepcopy(model), copy.deepcopy(model)
    expected = _train(autograd_model, x, y, manual_backward=False)
    actual = _train(manual_model, x, y, manual_backward=True)
    assert expected[-1] < 0.5 * expected[0]  # it trains
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=0.0)
    for (name, a), b in zip(autograd_model.state_dict().items(), manual_model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e2 * rtol, atol=1e2 * rtol, msg=name)  # running stats too


class _BackwardOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "backward" in func.name():
            self.ops.add(func.name())
        return func(*args, **(kwargs or {}))


def test_backward_under_use_manual_backward_runs_no_autograd_backward_operator() -> None:
    model = nn.Sequential(*list(_small_cnn().children()), nn.Tanh(), nn.Sigmoid()).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with manual.use_manual_backward(model):
        loss = model(x).pow(2).sum()
        with _BackwardOps() as recorder:
            loss.backward()
    assert recorder.ops == set()
    with _BackwardOps() as recorder:  # the control: autograd's own backward operators are visible
        model(x).pow(2).sum().backward()
    assert "aten::convolution_backward" in recorder.ops


def test_use_manual_backward_restores_the_model_exactly() -> None:
    model = _small_cnn()
    before = {name: tuple(sorted(vars(m))) for name, m in model.named_modules()}
    with manual.use_manual_backward(model) as routed:
        assert routed == ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
        assert all("forward" in vars(m) for m in model.children())
    assert {name: tuple(sorted(vars(m))) for name, m in model.named_modules()} == before


def test_use_manual_backward_restores_the_model_when_the_block_raises() -> None:
    model = _small_cnn()
    before = {name: tuple(sorted(vars(m))) for name, m in model.named_modules()}
    with pytest.raises(KeyError, match="boom"):
        with manual.use_manual_backward(model):
            raise KeyError("boom")
    assert {name: tuple(sorted(vars(m))) for name, m in model.named_modules()} == before


def test_use_manual_backward_cannot_be_nested_and_the_outer_block_survives() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with manual.use_manual_backward(model):
        with pytest.raises(manual.ManualGradError, match="already routed"):
            with manual.use_manual_backward(model):
                pass
        assert all("forward" in vars(m) for m in model)  # still routed by the outer block
    assert not any("forward" in vars(m) for m in model)


def test_use_manual_backward_puts_back_an_instance_forward() -> None:
    layer = nn.Linear(2, 2)
    patched = layer.forward
    layer.forward = patched
    with manual.use_manual_backward(layer):
        assert layer.forward is not patched
    assert vars(layer)["forward"] is patched


def test_use_manual_backward_keeps_unsupported_layers_and_the_values() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.0), nn.GELU(), nn.Linear(3, 1)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = model(x)
    with manual.use_manual_backward(model) as routed:
        actual = model(x)
    assert routed == ["0", "3"]
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_inplace_relu_under_manual_backward_modifies_its_input_as_the_module_does() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.conv(x)
            skip = hidden  # the in-place ReLU changes what `skip` sees, too
            return self.relu(hidden) + skip

    model = Block().double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    leaf = x.clone().requires_grad_(True)
    expected_out = model(leaf)
    expected = torch.autograd.grad(expected_out.pow(2).sum(), [leaf, *model.parameters()])
    leaf = x.clone().requires_grad_(True)
    with manual.use_manual_backward(model):
        out = model(leaf)
        actual = torch.autograd.grad(out.pow(2).sum(), [leaf, *model.parameters()])
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_max_pool_with_return_indices_under_manual_backward() -> None:
    module = nn.MaxPool2d(2, return_indices=True)
    x = torch.randn(1, 2, 4, 4)
    expected_out, expected_indices = module(x)
    with manual.use_manual_backward(module):
        out, indices = module(x)
    torch.testing.assert_close(out, expected_out)
    assert torch.equal(indices, expected_indices)


def test_use_manual_backward_leaves_no_state_behind() -> None:
    model = _small_cnn()
    x = torch.randn(4, 3, 8, 8)
    before = module_snapshot(model)
    with manual.use_manual_backward(model), torch.no_grad():
        model.eval()(x)  # eval mode: no running-statistics update
    model.train()
    assert_same_snapshot(before, module_snapshot(model))
