"""What a manual backward rule is: a functional forward beside a fast and a reference backward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Optional

from torch import Tensor, nn

from ..errors import ManualGradError

Grads = dict[str, Optional[Tensor]]
"""Gradients by name: ``"input"`` and the names of the module's parameters (``"weight"``, ``"bias"``)."""

State = dict[str, Optional[Tensor]]
"""The tensors a rule reads from its module, by attribute name (parameters and running statistics)."""

ForwardFn = Callable[[nn.Module, Tensor, State], Tensor]
BackwardFn = Callable[[nn.Module, Tensor, State, Tensor], Grads]
KinkFn = Callable[[nn.Module, Tensor, float], Tensor]


class Formula(NamedTuple):
    """One formula of a rule in LaTeX: the forward pass or the gradient of one tensor."""

    tensor: str                  # "forward", "input" or a parameter's name ("weight", "bias")
    what: str                    # a caption in words
    latex: str


FormulasFn = Callable[[nn.Module], list[Formula]]

DY = r"\frac{\partial L}{\partial Y"
"""The start of ``∂L/∂Y`` with an index still to come (close it with ``}}``)."""
DYF = r"\frac{\partial L}{\partial Y}"
DXF = r"\frac{\partial L}{\partial X}"

REFERENCE_MAX_STEPS = 50_000
"""The most loop iterations a reference (loop) implementation runs before it refuses the input."""


def require_small(steps: int, what: str) -> None:
    """Refuses an input too large for a reference (loop) implementation.

    Args:
        steps: The number of Python loop iterations the reference implementation would run.
        what: The name of the gradient, for the message.

    Raises:
        ManualGradError: If ``steps`` exceeds :data:`REFERENCE_MAX_STEPS`.
    """
    if steps > REFERENCE_MAX_STEPS:
        raise ManualGradError(
            f"the reference (loop) implementation of {what} would run {steps} loop iterations, more than "
            f"REFERENCE_MAX_STEPS={REFERENCE_MAX_STEPS}; use impl='fast' or a smaller input"
        )


def expand_param(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Expands an int or a sequence of ints to a tuple of ``n`` ints, as ``torch.nn.modules.utils._ntuple``.

    Args:
        value: An int, or a sequence of ``n`` ints.
        n: The number of spatial dimensions.
        name: The argument's name, for the message.

    Returns:
        A tuple of ``n`` ints.

    Raises:
        ManualGradError: If ``value`` is a sequence of another length.
    """
    if isinstance(value, int):
        return (value,) * n
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ManualGradError(f"{name}={value!r} must be an int or a sequence of {n} ints")
    return values


@dataclass(frozen=True)
class Rule:
    """How one module type computes its output and its gradients by hand.

    Every function receives the module only for its configuration (kernel size, stride, flags) and reads
    tensors from ``state``, so the same rule serves the module's own parameters, float64 copies and the
    tensors an :class:`torch.autograd.Function` received.

    Attributes:
        name: The module type's name, for messages.
        forward: ``(module, x, state) -> y``; the module's forward, written functionally; never changes
            the module (no running-statistics update). ``x`` as the module accepts it.
        fast: ``(module, x, state, grad_output) -> grads``; the vectorised backward. ``x`` and
            ``grad_output`` are contiguous and batched (see ``unbatched_ndim``).
        reference: Same signature; the backward transcribed with explicit Python loops.
        params: Names of the parameters the rule returns gradients for.
        buffers: Names of the other tensors ``forward`` reads (running statistics).
        input_ndims: The numbers of input dimensions the module accepts; ``None`` for any.
        unbatched_ndim: The number of dimensions of an unbatched input, which gets a batch dimension of
            size one before the rule runs; ``None`` when the module has no unbatched form.
        validate: ``(module, x) -> None``; raises :class:`ManualGradError` naming the argument when ``x``
            does not fit the module in a way the functional forward would not report clearly.
        kinks: ``(module, x, step) -> mask``; marks the input coordinates within ``step`` of a point where
            the layer is not differentiable (for ``step=0``: exactly at it, e.g. max-pool ties).
        stateful_forward: The forward including the module's side effects (running statistics), used by
            :func:`~diagnostics.manual.use_manual_backward`; ``None`` when ``forward`` has none to add.
        formulas: ``(module) -> formulas``; the forward pass and every gradient in LaTeX, written beside the
            rule that computes them (shown by the Gradient checks and Kernel heatmaps pages).
    """

    name: str
    forward: ForwardFn
    fast: BackwardFn
    reference: BackwardFn
    params: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    input_ndims: tuple[int, ...] | None = None
    unbatched_ndim: int | None = None
    validate: Callable[[nn.Module, Tensor], None] | None = None
    kinks: KinkFn | None = None
    stateful_forward: ForwardFn | None = None
    formulas: FormulasFn | None = None
