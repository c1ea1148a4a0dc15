"""Shared fixtures: small models, a temporary run store, deterministic seeds."""

from __future__ import annotations

import os

import pytest
import torch

import diagnostics as dx


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def require_fused_kernels() -> None:
    """Skip the calling test where the fused kernels cannot be built; fail instead in CI, which has a compiler."""
    from diagnostics.recording import native

    if native.kernels() is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI has a C compiler, so the fused kernels must build: {native.status()}")
        pytest.skip(f"fused kernels unavailable here: {native.status()}")


@pytest.fixture(params=["fused", "pytorch"])
def reductions(request, monkeypatch) -> str:
    """Run a test once through the fused CPU kernels (diagnostics.native) and once through PyTorch reductions.

    The fused run fails in CI (which has a C compiler) when the kernels cannot be built, and skips elsewhere.
    """
    from diagnostics.recording import native

    if request.param == "pytorch":
        monkeypatch.setenv("DIAGNOSTICS_NATIVE", "0")
    native.reset()
    if request.param == "fused":
        require_fused_kernels()
    yield request.param
    native.reset()          # before monkeypatch restores the environment: the next use decides afresh


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
