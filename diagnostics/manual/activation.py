"""Manual backward of the element-wise activations ReLU, Tanh and Sigmoid, fast and with loops.

* ReLU: ``y = max(x, 0)``, ``dL/dx = 1[x > 0] * dL/dy`` (PyTorch's choice at ``x = 0``: zero).
* Tanh: ``y = tanh(x)``, ``dL/dx = (1 - y^2) * dL/dy``.
* Sigmoid: ``y = 1 / (1 + exp(-x))``, ``dL/dx = y * (1 - y) * dL/dy``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from .rule import DXF, DYF, Formula, Grads, Rule, State, require_small


def relu_grad_input(input: Tensor, grad_output: Tensor) -> Tensor:
    """dL/dx of ``relu``: ``1[x > 0] * dL/dy``.

    Args:
        input: ``(*)``, the input before any in-place modification.
        grad_output: ``(*)``.

    Returns:
        ``(*)``.
    """
    return grad_output * (input > 0)  # (*)


def tanh_grad_input(input: Tensor, grad_output: Tensor) -> Tensor:
    """dL/dx of ``tanh``: ``(1 - tanh(x)^2) * dL/dy``.

    Args:
        input: ``(*)``.
        grad_output: ``(*)``.

    Returns:
        ``(*)``.
    """
    output = torch.tanh(input)  # (*)
    return grad_output * (1 - output * output)  # (*)


def sigmoid_grad_input(input: Tensor, grad_output: Tensor) -> Tensor:
    """dL/dx of ``sigmoid``: ``sigmoid(x) * (1 - sigmoid(x)) * dL/dy``.

    Args:
        input: ``(*)``.
        grad_output: ``(*)``.

    Returns:
        ``(*)``.
    """
    output = torch.sigmoid(input)  # (*)
    return grad_output * (1 - output) * output  # (*)


def _elementwise_reference(input: Tensor, grad_output: Tensor, derivative, what: str) -> Tensor:
    """``dL/dx_i = f'(x_i) * dL/dy_i``, one element at a time in Python floats."""
    require_small(input.numel(), what)
    grads = []
    for x, g in zip(input.flatten().tolist(), grad_output.flatten().tolist()):
        grads.append(derivative(x) * g)
    return torch.tensor(grads, dtype=grad_output.dtype, device=grad_output.device).view(input.shape)  # (*)


def _relu_derivative(x: float) -> float:
    return 1.0 if x > 0 else 0.0


def _tanh_derivative(x: float) -> float:
    return 1.0 - math.tanh(x) ** 2


def _sigmoid_derivative(x: float) -> float:
    y = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))  # no overflow for x << 0
    return y * (1.0 - y)


def relu_grad_input_reference(input: Tensor, grad_output: Tensor) -> Tensor:
    """:func:`relu_grad_input` one element at a time."""
    return _elementwise_reference(input, grad_output, _relu_derivative, "relu_grad_input")


def tanh_grad_input_reference(input: Tensor, grad_output: Tensor) -> Tensor:
    """:func:`tanh_grad_input` one element at a time."""
    return _elementwise_reference(input, grad_output, _tanh_derivative, "tanh_grad_input")


def sigmoid_grad_input_reference(input: Tensor, grad_output: Tensor) -> Tensor:
    """:func:`sigmoid_grad_input` one element at a time."""
    return _elementwise_reference(input, grad_output, _sigmoid_derivative, "sigmoid_grad_input")


def _relu_forward(module: nn.ReLU, x: Tensor, state: State) -> Tensor:
    return torch.relu(x)  # (*) out of place: the rule keeps the input; an in-place module is handled by the caller


def _tanh_forward(module: nn.Tanh, x: Tensor, state: State) -> Tensor:
    return torch.tanh(x)  # (*)


def _sigmoid_forward(module: nn.Sigmoid, x: Tensor, state: State) -> Tensor:
    return torch.sigmoid(x)  # (*)


def _elementwise_grads(grad_input, module: nn.Module, x: Tensor, state: State, grad_output: Tensor) -> Grads:
    return {"input": grad_input(x, grad_output)}  # (*)


def _relu_kinks(module: nn.Module, x: Tensor, step: float) -> Tensor:
    return x.abs() <= 2 * step  # (*) where a step of that size crosses zero



# --- formulas (LaTeX), shown by the Gradient checks page -----------------------------------------------------

def elementwise_formulas(forward: str, backward: str, module: nn.Module | None = None) -> list[Formula]:
    """An elementwise layer's forward and input gradient in LaTeX."""
    return [Formula("forward", "Forward", forward), Formula("input", "Input gradient", backward)]


RELU_FORMULAS = partial(elementwise_formulas, r"Y = \max(X, 0)", rf"{DXF} = \mathbb{{1}}[X > 0] \odot {DYF}")
TANH_FORMULAS = partial(elementwise_formulas, r"Y = \tanh X", rf"{DXF} = (1 - \tanh^2 X) \odot {DYF}")
SIGMOID_FORMULAS = partial(elementwise_formulas, r"Y = \sigma(X) = \frac{1}{1 + e^{-X}}",
                           rf"{DXF} = \sigma(X)\,(1 - \sigma(X)) \odot {DYF}")


RELU = Rule(
    name="ReLU",
    forward=_relu_forward,
    fast=partial(_elementwise_grads, relu_grad_input),
    reference=partial(_elementwise_grads, relu_grad_input_reference),
    kinks=_relu_kinks,
    formulas=RELU_FORMULAS,
)

TANH = Rule(
    name="Tanh",
    forward=_tanh_forward,
    fast=partial(_elementwise_grads, tanh_grad_input),
    reference=partial(_elementwise_grads, tanh_grad_input_reference),
    formulas=TANH_FORMULAS,
)

SIGMOID = Rule(
    name="Sigmoid",
    forward=_sigmoid_forward,
    fast=partial(_elementwise_grads, sigmoid_grad_input),
    reference=partial(_elementwise_grads, sigmoid_grad_input_reference),
    formulas=SIGMOID_FORMULAS,
)
