"""The fast manual rules as autograd Functions, and a context manager that trains a model through them."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ManualGradError
from .registry import is_supported, rule_for, run_rule
from .rule import Rule

_ROUTED = "__manual_backward__"
"""Attribute set on the forward functions :class:`ManualBackwardRouting` installs, to refuse nesting."""

_NO_INSTANCE_FORWARD = object()


class ManualBackwardFunction(torch.autograd.Function):
    """A layer's forward whose ``backward`` is the layer's fast manual rule (never autograd).

    ``ManualBackwardFunction.apply(module, rule, x, *params)`` computes ``module(x)`` with the tensors in
    ``params`` (in ``rule.params`` order; ``None`` for a missing bias) in place of the module's parameters,
    so autograd, and :func:`torch.autograd.gradcheck`, see them as inputs. An in-place ReLU modifies ``x``
    in place, as the module would; its rule still gets the input from before the modification.
    """

    @staticmethod
    def forward(ctx: Any, module: nn.Module, rule: Rule, x: Tensor, *params: Tensor | None) -> Tensor:
        state = dict(zip(rule.params, params))
        # Batch statistics replace the running ones in training mode; evaluation mode reads them.
        buffers = [None if module.training else getattr(module, name) for name in rule.buffers]
        state.update(zip(rule.buffers, buffers))
        output = (rule.stateful_forward or rule.forward)(module, x, state)
        saved_input = x
        if getattr(module, "inplace", False):
            saved_input = x.clone()  # the rule needs the input before the modification
            x.copy_(output)
            ctx.mark_dirty(x)
            output = x
        ctx.module = copy.copy(module)  # its configuration (e.g. training) as during this forward pass
        ctx.rule = rule
        ctx.num_params = len(params)
        ctx.save_for_backward(saved_input, *params, *buffers)
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        x, *tensors = ctx.saved_tensors
        rule: Rule = ctx.rule
        state = dict(zip(rule.params, tensors[: ctx.num_params]))
        state.update(zip(rule.buffers, tensors[ctx.num_params :]))
        grads = run_rule(rule, ctx.module, x, state, grad_output, "fast")
        param_grads = [
            grads.get(name) if ctx.needs_input_grad[3 + i] else None for i, name in enumerate(rule.params)
        ]
        return (None, None, grads["input"] if ctx.needs_input_grad[2] else None, *param_grads)


def is_routed_forward(function: object) -> bool:
    """Whether ``function`` is a forward that :class:`ManualBackwardRouting` installed.

    Args:
        function: Any object, typically ``module.__dict__.get("forward")``.

    Returns:
        True for a routed forward.
    """
    return bool(getattr(function, _ROUTED, False))


def manual_forward(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` computed through :class:`ManualBackwardFunction`, so its backward is the manual rule.

    Args:
        module: A supported module.
        x: Its input.

    Returns:
        The module's output (differentiable part; see ``return_indices`` in :func:`use_manual_backward`).
    """
    rule = rule_for(module)
    params = [getattr(module, name) for name in rule.params]
    return ManualBackwardFunction.apply(module, rule, x, *params)


def _routed_forward(module: nn.Module, rule: Rule, original: Any):
    def forward(input: Tensor, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            raise ManualGradError(
                f"{rule.name} was called with arguments besides its input ({len(args)} positional, "
                f"{sorted(kwargs)}); use_manual_backward routes forward(input) only"
            )
        output = manual_forward(module, input)
        if getattr(module, "return_indices", False):
            with torch.no_grad():
                _, indices = original(input.detach())
            return output, indices
        return output

    setattr(forward, _ROUTED, True)
    return forward


class ManualBackwardRouting:
    """Routes a model's supported leaf layers through :class:`ManualBackwardFunction` while entered.

    Owns the original forwards: ``__enter__`` sets an instance attribute ``forward`` on each supported
    leaf module, ``__exit__`` deletes it again (or puts back an instance ``forward`` that was there), also
    when the block raised. Entering twice, or routing a model already routed, raises.

    Args:
        model: Any module; its supported leaf modules (no children) are routed, others run unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers: list[str] = []
        self._originals: dict[nn.Module, Any] = {}

    def __enter__(self) -> list[str]:
        if self._originals:
            raise ManualGradError("this use_manual_backward context is already entered")
        try:
            for name, module in self.model.named_modules():
                if next(module.children(), None) is not None or not is_supported(module):
                    continue
                previous = module.__dict__.get("forward", _NO_INSTANCE_FORWARD)
                if is_routed_forward(previous):
                    raise ManualGradError(
                        f"layer {name or type(module).__name__!r} is already routed through the manual "
                        "backward; use_manual_backward cannot be nested on the same model"
                    )
                original = module.forward
                self._originals[module] = previous
                module.forward = _routed_forward(module, rule_for(module), original)
                self.layers.append(name)
        except BaseException:
            self._restore()
            raise
        return list(self.layers)

    def __exit__(self, *exc_info: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        for module, previous in self._originals.items():
            if previous is _NO_INSTANCE_FORWARD:
                del module.forward
            else:
                module.forward = previous
        self._originals.clear()
        self.layers = []


def use_manual_backward(model: nn.Module) -> ManualBackwardRouting:
    """A context manager in which the model's supported layers backpropagate with the manual fast rules.

    Inside the block every supported leaf layer computes its usual output (running statistics of
    batch norm are updated as usual; an in-place ReLU still modifies its input) but autograd calls the
    manual rule for its backward. Afterwards the model is exactly as before, also if the block raised.

    Example::

        with manual.use_manual_backward(model) as routed:
            loss = criterion(model(x), y)
            loss.backward()

    Args:
        model: Any module.

    Returns:
        A context manager; entering it returns the qualified names of the routed layers.
    """
    return ManualBackwardRouting(model)
