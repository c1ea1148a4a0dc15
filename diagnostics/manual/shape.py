"""Manual backward of the layers that only move values: Flatten and Identity.

* Flatten: ``y = x.flatten(start_dim, end_dim)`` moves every element unchanged, so ``dL/dx`` is ``dL/dy``
  reshaped back to the input's shape.
* Identity: ``dL/dx = dL/dy``.

Neither has loops to write out; the reference implementation is the same one-line formula.
"""

from __future__ import annotations

from torch import Tensor, nn

from .rule import DXF, DYF, Formula, Grads, Rule, State


def flatten_grad_input(input_size: tuple[int, ...], grad_output: Tensor) -> Tensor:
    """dL/dx of ``flatten``: ``dL/dy`` reshaped to the input's shape.

    Args:
        input_size: ``(*)``, the input's shape.
        grad_output: The flattened shape.

    Returns:
        ``input_size``.
    """
    return grad_output.reshape(input_size)  # (*)


def _flatten_forward(module: nn.Flatten, x: Tensor, state: State) -> Tensor:
    return x.flatten(module.start_dim, module.end_dim)  # (*) with start_dim..end_dim merged


def _flatten_grads(module: nn.Flatten, x: Tensor, state: State, grad_output: Tensor) -> Grads:
    return {"input": flatten_grad_input(x.shape, grad_output)}  # (*) shaped like x


def _identity_forward(module: nn.Identity, x: Tensor, state: State) -> Tensor:
    return x  # (*)


def _identity_grads(module: nn.Identity, x: Tensor, state: State, grad_output: Tensor) -> Grads:
    return {"input": grad_output}  # (*)



# --- formulas (LaTeX), shown by the Gradient checks page -----------------------------------------------------

def flatten_formulas(module: nn.Module | None = None) -> list[Formula]:
    """Flatten's forward and input gradient in LaTeX."""
    return [Formula("forward", "Forward", r"Y = \operatorname{flatten}(X)"),
            Formula("input", "Input gradient", rf"{DXF} = \operatorname{{reshape}}\Big({DYF}, \operatorname{{shape}}(X)\Big)")]


def identity_formulas(module: nn.Module | None = None) -> list[Formula]:
    """Identity's forward and input gradient in LaTeX."""
    return [Formula("forward", "Forward", r"Y = X"), Formula("input", "Input gradient", rf"{DXF} = {DYF}")]


FLATTEN = Rule(
    name="Flatten",
    forward=_flatten_forward,
    fast=_flatten_grads,
    reference=_flatten_grads,
    formulas=flatten_formulas,
)

IDENTITY = Rule(
    name="Identity",
    forward=_identity_forward,
    fast=_identity_grads,
    reference=_identity_grads,
    formulas=identity_formulas,
)
