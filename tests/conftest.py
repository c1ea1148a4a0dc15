"""Shared fixtures: small models, a temporary run store, deterministic seeds."""

from __future__ import annotations

import pytest
import torch

import diagnostics as dx


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def store(tmp_path) -> dx.RunStore:
    return dx.RunStore(tmp_path / "runs")


def hook_state(model: torch.nn.Module) -> dict[str, tuple]:
    """Everything a monitor could leave behind on a model: hooks of every kind and instance attributes."""
    state = {}
    for name, module in model.named_modules():
        state[name] = (
            len(module._forward_hooks), len(module._forward_pre_hooks), len(module._backward_hooks),
            len(getattr(module, "_backward_pre_hooks", {})), tuple(sorted(vars(module))),
        )
    for name, p in model.named_parameters():
        state[f"param:{name}"] = (p._backward_hooks is None or len(p._backward_hooks) == 0,
                                  tuple(sorted(vars(p))))
    return state
