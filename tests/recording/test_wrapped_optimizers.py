"""Optimizer wrappers that subclass torch.optim.Optimizer without initialising it (accelerate's
AcceleratedOptimizer) are unwrapped, so update_ratio comes from the inner optimizer's step hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diagnostics as dx


class OptimizerSubclassWrapper(torch.optim.Optimizer):
    """Like accelerate's AcceleratedOptimizer: an Optimizer subclass that never calls Optimizer.__init__."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self, closure=None):
        return self.optimizer.step(closure)


def wrap_with_accelerate(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    accelerate = pytest.importorskip("accelerate")
    return accelerate.Accelerator(cpu=True).prepare_optimizer(optimizer)


@pytest.mark.parametrize("wrap", [pytest.param(OptimizerSubclassWrapper, id="optimizer-subclass"),
                                  pytest.param(wrap_with_accelerate, id="accelerate")])
def test_an_optimizer_subclass_wrapper_is_unwrapped(wrap) -> None:
    model = nn.Linear(3, 2)
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    with dx.GradientMonitor(model, optimizer=wrap(inner)) as mon:
        w = model.weight.detach().double().clone()
        model(torch.randn(4, 3)).square().sum().backward()
        mon.step()
        inner.step()
    assert mon.optimizer is inner
    ratio = mon.frame()["update_ratio"].item()                 # one row: the Linear itself
    expected = torch.linalg.vector_norm(model.weight.detach().double() - w) / torch.linalg.vector_norm(w)
    torch.testing.assert_close(float(ratio), float(expected), rtol=1e-5, atol=0.0)
