"""Helpers shared by the manual-gradient tests: autograd twins and a float64 closeness assertion."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

RTOL = 1e-10
"""The largest max relative error, max|a - b| / max|b|, allowed against autograd in float64."""


def autograd_grads(module: nn.Module, x: Tensor, grad_output: Tensor) -> dict[str, Tensor | None]:
    """The twin of ``manual.backward``: gradients of ``<module(x), grad_output>`` by autograd.

    Args:
        module: The layer.
        x: Its input.
        grad_output: Shaped like its output.

    Returns:
        ``{"input", "weight", "bias"}``; ``None`` where the module has no such parameter.
    """
    leaf = x.detach().clone().requires_grad_(True)
    names = [name for name in ("weight", "bias") if isinstance(getattr(module, name, None), Tensor)]
    params = [getattr(module, name) for name in names]
    output = module(leaf.clone())
    output = output[0] if isinstance(output, tuple) else output
    grads = torch.autograd.grad(output, [leaf, *params], grad_output, allow_unused=True)
    result: dict[str, Tensor | None] = {"input": grads[0], "weight": None, "bias": None}
    for name, param, grad in zip(names, params, grads[1:]):
        result[name] = torch.zeros_like(param) if grad is None else grad
    return result


def assert_close_rel(actual: Tensor, expected: Tensor, rtol: float = RTOL, floor: float = 0.0) -> None:
    """``max|actual - expected| <= rtol * max(max|expected|, floor)``, via ``torch.testing.assert_close``.

    Args:
        actual: The manual gradient.
        expected: The reference.
        rtol: The allowed max relative error.
        floor: The smallest scale (for gradients that are zero up to rounding).
    """
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=rtol * max(scale, floor, 1e-300))


def assert_grads_close(actual: dict[str, Any], expected: dict[str, Any], rtol: float = RTOL) -> None:
    """Every gradient of ``actual`` matches ``expected``; ``None`` exactly where ``expected`` has ``None``.

    Args:
        actual: ``manual.backward``'s result.
        expected: :func:`autograd_grads`'s result.
        rtol: The allowed max relative error.
    """
    assert set(actual) == set(expected)
    for name, value in expected.items():
        if value is None:
            assert actual[name] is None, name
        else:
            assert actual[name] is not None, name
            assert_close_rel(actual[name], value, rtol)


def module_snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a check may not change: parameters, buffers, ``.grad``, training flags, hooks, attributes.

    Args:
        model: Any module.

    Returns:
        A dict to compare with a later snapshot by :func:`assert_same_snapshot`.
    """
    snapshot: dict[str, Any] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        snapshot[f"tensor:{name}"] = tensor.detach().clone()
        snapshot[f"grad:{name}"] = None if tensor.grad is None else tensor.grad.clone()
    for name, module in model.named_modules():
        snapshot[f"module:{name}"] = (
            module.training,
            len(module._forward_hooks),
            len(module._forward_pre_hooks),
            len(module._backward_hooks),
            tuple(sorted(vars(module))),
        )
    return snapshot


def assert_same_snapshot(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Two :func:`module_snapshot` results are equal, tensors bit for bit."""
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, Tensor):
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
        else:
            assert after[key] == value, key
