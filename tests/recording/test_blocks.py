"""Backward gain and branch share per block against an independent float64 autograd computation."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

import diagnostics as dx
from tests.conftest import hook_state


class Capture:
    """Each block's input (detached) and the gradient at its output, taken by the test's own hooks."""

    def __init__(self, blocks: dict[str, nn.Module]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.out_grads: dict[str, torch.Tensor] = {}
        self.handles = [b.register_forward_hook(self._hook(n)) for n, b in blocks.items()]

    def _hook(self, name):
        def hook(module, args, output):
            self.inputs[name] = args[0].detach().clone()
            output.register_hook(lambda g: self.out_grads.__setitem__(name, g.detach().clone()))
        return hook


def oracle(block: nn.Module, x: torch.Tensor, g_y: torch.Tensor, branch, skip, act):
    """(‖∂L/∂x‖, share) by autograd: x through the whole block, and g_skip through the skip alone."""
    x = x.clone().requires_grad_(True)
    (g_x,) = torch.autograd.grad(block(x), x, g_y)
    if branch is None:
        return float(g_x.norm()), math.nan
    s = branch(x) + skip(x)                                          # the pre-activation sum
    (g_s,) = torch.autograd.grad(act(s), s, g_y)                     # ∂L/∂s
    (g_skip,) = torch.autograd.grad(skip(x), x, g_s)
    return float(g_x.norm()), float((g_x - g_skip).norm() / g_x.norm())


def basic_parts(b):
    branch = lambda x: b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x)))))            # noqa: E731
    skip = b.downsample if b.downsample is not None else (lambda x: x)
    return branch, skip, torch.relu


def conv_parts(b):
    if not b.residual:
        return None, None, None
    branch = lambda x: b.bn(b.conv(x)) if b.bn is not None else b.conv(x)   # noqa: E731
    return branch, (lambda x: x), b.act


def check(model: nn.Module, x: torch.Tensor, blocks, parts) -> None:
    named = dict(model.named_modules())
    before = hook_state(model)
    with dx.GradientMonitor(model, blocks=blocks) as mon:
        chosen = {n: named[n] for n in mon._blocks.types()}
        capture = Capture(chosen)
        model(x).pow(2).sum().backward()
        mon.step()
    for h in capture.handles:
        h.remove()
    assert hook_state(model) == before
    frame = mon.block_frame().set_index("block")
    assert list(frame.sort_values("depth").index) == list(chosen)                 # forward order
    model.zero_grad()
    for name, block in chosen.items():
        row = frame.loc[name]
        branch, skip, act = parts(block)
        in_norm, share = oracle(block, capture.inputs[name], capture.out_grads[name], branch, skip, act)
        out_norm = float(capture.out_grads[name].norm())
        assert math.isclose(row["out_grad_norm"], out_norm, rel_tol=1e-9)
        if math.isnan(row["in_grad_norm"]):                         # the input needed no gradient
            assert not capture.inputs[name].requires_grad and name == next(iter(chosen))
            assert math.isnan(row["gain"])
            continue
        assert math.isclose(row["in_grad_norm"], in_norm, rel_tol=1e-9), name
        assert math.isclose(row["gain"], in_norm / out_norm, rel_tol=1e-9), name
        if branch is None:
            assert math.isnan(row["branch_share"]) and not row["residual"]
        else:
            assert math.isclose(row["branch_share"], share, rel_tol=1e-7), name


def test_torchvision_resnet18_blocks():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).double()
    check(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), "auto", basic_parts)


@pytest.mark.parametrize("variant", ["residual", "residual+batchnorm", "plain"])
def test_project_cnn_blocks(variant):
    model = dx.build_cnn(dx.variant_config(variant, depth=5, width=4, in_channels=1), seed=0).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    check(model, x, "auto", conv_parts)


def test_a_block_called_twice_pools_its_calls():
    block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    model = nn.ModuleDict({"block": block, "head": nn.Linear(4, 1)})
    x = torch.randn(3, 4, requires_grad=True)
    grads = {}
    with dx.GradientMonitor(model, blocks=["block"]) as mon:
        h1 = block(x)
        h1.register_hook(lambda g: grads.__setitem__("y1", g))
        h2 = block(h1)
        h2.register_hook(lambda g: grads.__setitem__("y2", g))
        model["head"](h2).sum().backward()
        mon.step()
    row = mon.block_frame().iloc[0]
    assert row["calls"] == 2
    assert math.isclose(row["out_grad_norm"], math.sqrt(float(grads["y1"].pow(2).sum() + grads["y2"].pow(2).sum())),
                        rel_tol=1e-6)


def test_blocks_that_match_nothing_are_refused():
    with pytest.raises(dx.MonitorError, match="matches no module"):
        dx.GradientMonitor(nn.Sequential(nn.Linear(2, 2)), blocks="auto")
