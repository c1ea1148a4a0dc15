"""Round-trip checks shared by the checkpoint tests: a probed run's per-layer weight-gradient norms, read back
from the store, against a float64 recompute with plain autograd on the original model."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

import diagnostics as dx


def float64_weight_grad_norms(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor]) -> dict[str, float]:
    """‖∂L/∂W‖ per module on a float64 copy of ``model`` in training mode: W is every parameter the module owns
    itself except biases, pooled into one norm; a parameter shared by several modules counts for the first."""
    ref = copy.deepcopy(model).double()
    ref.train()
    ref.zero_grad()
    loss_of(ref).backward()
    seen: set[int] = set()
    norms = {}
    for name, module in ref.named_modules():
        squares = []
        for attr, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if not attr.startswith("bias") and p.grad is not None:
                squares.append(p.grad.pow(2).sum())
        if squares:                                 # the store names the root layer by its type
            norms[name or type(ref).__name__] = float(torch.stack(squares).sum().sqrt())
    return norms


def stored_norms(store: dx.RunStore, run_id: str) -> dict[str, float]:
    """The run's step-0 weight-gradient norm per layer, as the store holds it."""
    frame = store.frame(run_id)
    frame = frame[(frame["step"] == 0) & frame["weight_grad_norm"].notna()]
    return dict(zip(frame["layer"], frame["weight_grad_norm"].astype(float)))


def assert_norms_match(store: dx.RunStore, run_id: str, expected: dict[str, float], *, min_layers: int,
                       rtol: float = 2e-3) -> None:
    """Every layer of the stored run matches the float64 recompute, under the original layer names."""
    got = stored_norms(store, run_id)
    assert len(got) >= min_layers, sorted(got)
    assert set(got) <= set(expected), sorted(set(got) - set(expected))[:5]
    names = sorted(got)
    torch.testing.assert_close(torch.tensor([got[n] for n in names], dtype=torch.float64),
                               torch.tensor([expected[n] for n in names], dtype=torch.float64),
                               rtol=rtol, atol=1e-7)
