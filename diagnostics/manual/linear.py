"""Manual backward of Linear, fast and with loops.

Forward ``Y = X W^T + b`` over the rows ``X[r]`` of the input flattened to ``(R, in_features)``; gradients

    dL/dX = dL/dY W,    dL/dW = dL/dY^T X,    dL/db = sum_r dL/dY[r].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ManualGradError
from .rule import DXF, DY, DYF, Formula, Grads, Rule, State, require_small


def linear_grad_input(input_size: Sequence[int], weight: Tensor, grad_output: Tensor) -> Tensor:
    """dL/dX of ``linear``: ``dL/dY W``.

    Args:
        input_size: ``(*, in_features)``.
        weight: ``(out_features, in_features)``.
        grad_output: ``(*, out_features)``.

    Returns:
        ``(*, in_features)``.
    """
    return grad_output @ weight  # (*, in_features)


def linear_grad_weight(input: Tensor, weight_size: Sequence[int], grad_output: Tensor) -> Tensor:
    """dL/dW of ``linear``: ``dL/dY^T X`` over all leading dimensions.

    Args:
        input: ``(*, in_features)``.
        weight_size: ``(out_features, in_features)``.
        grad_output: ``(*, out_features)``.

    Returns:
        ``(out_features, in_features)``.
    """
    out_features, in_features = weight_size
    rows = grad_output.reshape(-1, out_features)  # (R, out_features)
    return rows.T @ input.reshape(-1, in_features)  # (out_features, in_features)


def linear_grad_bias(grad_output: Tensor) -> Tensor:
    """dL/db of ``linear``: ``sum_r dL/dY[r]``.

    Args:
        grad_output: ``(*, out_features)``.

    Returns:
        ``(out_features,)``.
    """
    return grad_output.reshape(-1, grad_output.shape[-1]).sum(dim=0)  # (out_features,)


def linear_grads_reference(input: Tensor, weight: Tensor, grad_output: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """dL/dX, dL/dW and dL/db of ``linear`` with loops over rows and output features.

    ``dL/dX[r] = sum_o dL/dY[r, o] W[o]``, ``dL/dW[o] = sum_r dL/dY[r, o] X[r]``, ``dL/db[o] = sum_r dL/dY[r, o]``.

    Args:
        input: ``(*, in_features)``.
        weight: ``(out_features, in_features)``.
        grad_output: ``(*, out_features)``.

    Returns:
        ``(*, in_features)``, ``(out_features, in_features)`` and ``(out_features,)``.
    """
    out_features, in_features = weight.shape
    x = input.reshape(-1, in_features)  # (R, in_features)
    g = grad_output.reshape(-1, out_features)  # (R, out_features)
    require_small(x.shape[0] * out_features, "linear_grads")
    grad_input = x.new_zeros(x.shape)  # (R, in_features)
    grad_weight = weight.new_zeros(weight.shape)  # (out_features, in_features)
    grad_bias = weight.new_zeros(out_features)  # (out_features,)
    for r in range(x.shape[0]):
        for o in range(out_features):
            grad_input[r] += g[r, o] * weight[o]  # (in_features,)
            grad_weight[o] += g[r, o] * x[r]  # (in_features,)
            grad_bias[o] += g[r, o]
    return grad_input.view(input.shape), grad_weight, grad_bias


def _validate_linear(module: nn.Linear, x: Tensor) -> None:
    if x.shape[-1] != module.in_features:
        raise ManualGradError(
            f"{module!r} expects in_features={module.in_features} in the last dimension, but the input has "
            f"shape {tuple(x.shape)}"
        )


def _linear_forward(module: nn.Linear, x: Tensor, state: State) -> Tensor:
    return F.linear(x, state["weight"], state["bias"])  # (*, out_features)


def _linear_fast(module: nn.Linear, x: Tensor, state: State, grad_output: Tensor) -> Grads:
    weight = state["weight"]
    return {
        "input": linear_grad_input(x.shape, weight, grad_output),
        "weight": linear_grad_weight(x, weight.shape, grad_output),
        "bias": None if state["bias"] is None else linear_grad_bias(grad_output),
    }


def _linear_reference(module: nn.Linear, x: Tensor, state: State, grad_output: Tensor) -> Grads:
    grad_input, grad_weight, grad_bias = linear_grads_reference(x, state["weight"], grad_output)
    return {"input": grad_input, "weight": grad_weight, "bias": None if state["bias"] is None else grad_bias}



# --- formulas (LaTeX), shown by the Gradient checks page -----------------------------------------------------

def linear_formulas(module: nn.Module | None = None) -> list[Formula]:
    """The forward pass and the gradients of a linear layer in LaTeX."""
    return [Formula("forward", "Forward", r"Y = X W^\top + b"),
            Formula("bias", "Bias gradient", rf"\frac{{\partial L}}{{\partial b}} = \sum_n {DY}_{{n}}}}"),
            Formula("weight", "Weight gradient", rf"\frac{{\partial L}}{{\partial W}} = \Big({DYF}\Big)^{{\!\top}} X"),
            Formula("input", "Input gradient", rf"{DXF} = {DYF}\, W")]


LINEAR = Rule(
    name="Linear",
    forward=_linear_forward,
    fast=_linear_fast,
    reference=_linear_reference,
    params=("weight", "bias"),
    validate=_validate_linear,
    formulas=linear_formulas,
)
