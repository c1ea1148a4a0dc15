"""The one registry from module type to manual backward rule, and :func:`backward`, which dispatches on it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import activation, batchnorm, conv, linear, pool, shape
from ..errors import ManualGradError, UnsupportedModuleError
from .rule import Formula, Grads, Rule, State

IMPLS = ("fast", "reference")
"""``"fast"``: vectorised (unfold, transposed convolution, scatter); ``"reference"``: explicit loops."""

_RULES: dict[type[nn.Module], Rule] = {}


def register(module_type: type[nn.Module], rule: Rule) -> None:
    """Adds the manual rule of a module type.

    Args:
        module_type: The exact ``nn.Module`` class (subclasses are not matched: they may change forward).
        rule: Its rule.

    Raises:
        ManualGradError: If the type already has a rule; rules are never replaced silently.
    """
    if module_type in _RULES:
        raise ManualGradError(
            f"{module_type.__name__} already has a manual rule ({_RULES[module_type].name}); refusing to replace it"
        )
    _RULES[module_type] = rule


for _module_type, _rule in (
    (nn.Conv1d, conv.CONV1D),
    (nn.Conv2d, conv.CONV2D),
    (nn.ConvTranspose2d, conv.CONV_TRANSPOSE2D),
    (nn.MaxPool1d, pool.MAX_POOL1D),
    (nn.MaxPool2d, pool.MAX_POOL2D),
    (nn.AvgPool1d, pool.AVG_POOL1D),
    (nn.AvgPool2d, pool.AVG_POOL2D),
    (nn.AdaptiveAvgPool1d, pool.ADAPTIVE_AVG_POOL1D),
    (nn.AdaptiveAvgPool2d, pool.ADAPTIVE_AVG_POOL2D),
    (nn.AdaptiveMaxPool2d, pool.ADAPTIVE_MAX_POOL2D),
    (nn.ReLU, activation.RELU),
    (nn.Tanh, activation.TANH),
    (nn.Sigmoid, activation.SIGMOID),
    (nn.Linear, linear.LINEAR),
    (nn.BatchNorm1d, batchnorm.BATCH_NORM1D),
    (nn.BatchNorm2d, batchnorm.BATCH_NORM2D),
    (nn.Flatten, shape.FLATTEN),
    (nn.Identity, shape.IDENTITY),
):
    register(_module_type, _rule)


def supported_module_types() -> tuple[type[nn.Module], ...]:
    """The module types that have a manual rule, in registration order.

    Returns:
        A tuple of ``nn.Module`` classes.
    """
    return tuple(_RULES)


def is_supported(module: nn.Module) -> bool:
    """Whether the module's exact type has a manual rule.

    Args:
        module: Any module.

    Returns:
        True if :func:`rule_for` would return a rule.
    """
    return type(module) in _RULES


def rule_for(module: nn.Module) -> Rule:
    """The manual rule of a module.

    Args:
        module: Any module.

    Returns:
        The rule registered for its exact type.

    Raises:
        UnsupportedModuleError: If its type has none; the message lists the supported types.
    """
    rule = _RULES.get(type(module))
    if rule is None:
        names = ", ".join(t.__name__ for t in _RULES)
        note = ""
        parents = [t.__name__ for t in _RULES if isinstance(module, t)]
        if parents:
            note = f" (a subclass of {parents[0]} may change forward, so it does not inherit that rule)"
        raise UnsupportedModuleError(
            f"no manual backward rule for {type(module).__name__}{note}; supported module types: {names}"
        )
    return rule


def formulas(module: nn.Module) -> list[Formula]:
    """The forward pass and the backward formula of each gradient of a module, in LaTeX, from its rule's file.

    A gradient of a parameter the module does not have (``bias=False``, ``affine=False``) is left out.

    Args:
        module: A module with a manual rule.

    Returns:
        The forward pass first, then one formula per gradient.

    Raises:
        UnsupportedModuleError: If its type has no rule.
    """
    rule = rule_for(module)
    entries = rule.formulas(module) if rule.formulas is not None else []
    present = {name for name in rule.params if isinstance(getattr(module, name, None), Tensor)}
    return [f for f in entries if f.tensor in ("forward", "input") or f.tensor in present]


def module_state(module: nn.Module, rule: Rule) -> State:
    """The tensors a rule reads from a module, detached.

    Args:
        module: The module.
        rule: Its rule.

    Returns:
        Parameters and buffers by attribute name; ``None`` where the module has none (``bias=False``).
    """
    state = {}
    for name in rule.params + rule.buffers:
        value = getattr(module, name)
        state[name] = None if value is None else value.detach()
    return state


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ManualGradError(f"impl={impl!r} must be one of {IMPLS}")


def checked_output_shape(module: nn.Module, rule: Rule, x: Tensor, state: State) -> torch.Size:
    """Checks that ``x`` fits the module and returns the shape of its output, computed on the meta device.

    Args:
        module: The module.
        rule: Its rule.
        x: The input.
        state: The module's tensors (:func:`module_state`).

    Returns:
        The output's shape.

    Raises:
        ManualGradError: If ``x`` is not a floating-point tensor, its dtype differs from the module's,
            or its shape does not fit the module; the message says which.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
        raise ManualGradError(f"the input of {rule.name} must be a floating-point tensor, got {kind}")
    for name, value in state.items():
        if value is not None and value.dtype != x.dtype:
            raise ManualGradError(
                f"the input is {x.dtype} but {rule.name}.{name} is {value.dtype}; cast the module or the input"
            )
    if rule.input_ndims is not None and x.dim() not in rule.input_ndims:
        expected = " or ".join(str(n) for n in rule.input_ndims)
        raise ManualGradError(f"{rule.name} expects an input with {expected} dimensions, got shape {tuple(x.shape)}")
    if rule.validate is not None:
        rule.validate(module, x)
    meta_state = {name: None if value is None else value.to("meta") for name, value in state.items()}
    try:
        output = rule.forward(module, x.detach().to("meta"), meta_state)
    except (RuntimeError, ValueError, IndexError) as err:
        raise ManualGradError(f"{module!r} cannot take an input of shape {tuple(x.shape)}: {err}") from err
    return output.shape


def check_grad_output(rule: Rule, x: Tensor, grad_output: Tensor, output_shape: torch.Size) -> None:
    """Checks that ``grad_output`` matches the forward output.

    Args:
        rule: The module's rule.
        x: The input.
        grad_output: The gradient of the loss with respect to the output.
        output_shape: The output's shape.

    Raises:
        ManualGradError: On a shape or dtype mismatch.
    """
    if not isinstance(grad_output, Tensor):
        raise ManualGradError(f"grad_output must be a tensor, got {type(grad_output).__name__}")
    if grad_output.shape != output_shape:
        raise ManualGradError(
            f"grad_output has shape {tuple(grad_output.shape)}, but {rule.name} maps an input of shape "
            f"{tuple(x.shape)} to an output of shape {tuple(output_shape)}"
        )
    if grad_output.dtype != x.dtype:
        raise ManualGradError(f"grad_output is {grad_output.dtype} but the input is {x.dtype}")


def run_rule(rule: Rule, module: nn.Module, x: Tensor, state: State, grad_output: Tensor, impl: str) -> Grads:
    """Runs a rule's backward on checked arguments, adding and removing the batch dimension if needed.

    Args:
        rule: The rule.
        module: The module (for its configuration).
        x: The input, batched or unbatched.
        state: The module's tensors.
        grad_output: Shaped like the output.
        impl: ``"fast"`` or ``"reference"``.

    Returns:
        Gradients by name.
    """
    unbatched = rule.unbatched_ndim is not None and x.dim() == rule.unbatched_ndim
    x, grad_output = x.detach().contiguous(), grad_output.detach().contiguous()
    if unbatched:
        x, grad_output = x.unsqueeze(0), grad_output.unsqueeze(0)
    with torch.no_grad():
        grads = (rule.fast if impl == "fast" else rule.reference)(module, x, state, grad_output)
    if unbatched:
        grads["input"] = grads["input"].squeeze(0)
    return grads


def backward(module: nn.Module, x: Tensor, grad_output: Tensor, *, impl: str = "fast") -> Grads:
    """The gradients of a supported layer, by hand: with respect to its input, weight and bias.

    Never calls autograd; the module is not changed (no running-statistics update, no ``.grad``).

    Args:
        module: An instance of a type in :func:`supported_module_types`, with its configuration.
        x: Its input, as the module accepts it (batched, or unbatched where the module allows).
        grad_output: ``dL/dY``, shaped like ``module(x)``.
        impl: ``"fast"`` (vectorised, the default) or ``"reference"`` (explicit loops, small inputs only).

    Returns:
        ``{"input": dL/dX, "weight": dL/dW or None, "bias": dL/db or None}``; ``None`` where the module
        has no such parameter.

    Raises:
        UnsupportedModuleError: If the module's type has no rule.
        ManualGradError: If ``x`` or ``grad_output`` does not fit the module, or a reference
            implementation refuses an input too large for its loops.
    """
    rule = rule_for(module)
    _check_impl(impl)
    state = module_state(module, rule)
    output_shape = checked_output_shape(module, rule, x, state)
    check_grad_output(rule, x, grad_output, output_shape)
    grads = run_rule(rule, module, x, state, grad_output, impl)
    return {"input": grads["input"], "weight": grads.get("weight"), "bias": grads.get("bias")}


def kink_mask(module: nn.Module, x: Tensor, step: float) -> Tensor | None:
    """The input coordinates within ``step`` of a point where the layer is not differentiable.

    Args:
        module: A supported module.
        x: Its input.
        step: The distance (``0`` for exactly at the point, e.g. a max-pool tie).

    Returns:
        A bool mask shaped like ``x``, or ``None`` for a layer that is differentiable everywhere.
    """
    rule = rule_for(module)
    if rule.kinks is None:
        return None
    unbatched = rule.unbatched_ndim is not None and x.dim() == rule.unbatched_ndim
    with torch.no_grad():
        mask = rule.kinks(module, x.detach().unsqueeze(0) if unbatched else x.detach(), step)
    return mask.squeeze(0) if unbatched else mask
