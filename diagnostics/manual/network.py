"""A full manual backward pass through Sequential networks, residual blocks and the project's own CNN family.

The forward pass runs every leaf layer's functional forward (:attr:`Rule.forward`: no running-statistics
update) and keeps, for each, a closure that maps ``dL/dY`` to ``dL/dX`` with the layer's manual rule and
adds its parameter gradients to the result. The backward pass calls those closures in reverse:

* ``nn.Sequential``: ``dL/dX`` of the whole is the composition of the children's, last child first.
* :class:`Residual`: ``y = body(x) + shortcut(x)``, so ``dL/dx = body'(x)^T dL/dy + shortcut'(x)^T dL/dy``:
  the skip path's gradient is added to the branch's.
* :class:`diagnostics.experiments.models.ConvBlock`: ``y = act(h)`` with ``h = bn(conv(x)) [+ x]``; with ``g = act'(h)^T
  dL/dy``, ``dL/dx = conv'(x)^T bn'^T g [+ g]``: a residual block adds the skip path's ``g`` to the branch's.
* :class:`diagnostics.experiments.models.CNN`: ``head(flatten(pool(blocks(x))))``, walked in that order.
* A parameter used by several layers (or a layer used several times) gets the sum of its gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import ManualGradError, UnsupportedModuleError
from .registry import IMPLS, checked_output_shape, module_state, rule_for, run_rule
from .shape import flatten_grad_input

CONTAINERS = "Sequential, Residual, and diagnostics.experiments.models' CNN and ConvBlock"
"""The containers :func:`network_backward` walks, for messages."""


class Residual(nn.Module):
    """A residual block: ``y = body(x) + shortcut(x)``.

    Args:
        body: The branch, e.g. ``nn.Sequential(conv, bn, relu, conv, bn)``.
        shortcut: The skip path; ``None`` for the identity (then ``body`` must keep the shape).
    """

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``body(x) + shortcut(x)``.

        Args:
            x: The block's input.

        Returns:
            The sum of both paths, shaped like ``body(x)``.
        """
        return self.body(x) + self.shortcut(x)


Backward = Callable[[Tensor], Tensor]


class _Tape:
    """The parameter gradients of one manual backward pass, keyed by their name in the root model."""

    def __init__(self, model: nn.Module, impl: str) -> None:
        self.impl = impl
        self.names = {id(p): name for name, p in model.named_parameters()}
        self.grads: dict[str, Tensor] = {}

    def add(self, param: nn.Parameter, grad: Tensor) -> None:
        name = self.names[id(param)]
        self.grads[name] = self.grads[name] + grad if name in self.grads else grad


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _project_types() -> tuple[type[nn.Module], type[nn.Module]]:
    """``(CNN, ConvBlock)`` of :mod:`diagnostics.experiments.models`, imported on use so this package stands on its own."""
    from ..experiments.models import CNN, ConvBlock

    return CNN, ConvBlock


def _trace_conv_block(block: nn.Module, x: Tensor, tape: _Tape, path: str) -> tuple[Tensor, Backward]:
    """``ConvBlock.forward`` by hand: ``act(bn(conv(x)) [+ x])``, and its backward.

    The skip connection is added before the activation, so the activation's input gradient ``g`` flows both
    through ``bn`` and ``conv`` (the branch) and straight to ``x`` (the skip path): ``dL/dx = branch + g``.
    """
    h, conv_backward = _trace(block.conv, x, tape, _join(path, "conv"))  # (N, C, H, W) or (N, C, L)
    bn_backward, bn_after = None, getattr(block, "bn_after", False)
    if block.bn is not None and not bn_after:
        h, bn_backward = _trace(block.bn, h, tape, _join(path, "bn"))  # same shape
    if block.residual:
        if h.shape != x.shape:
            raise ManualGradError(
                f"ConvBlock {path or '(root)'}: the branch output {tuple(h.shape)} and the skip input "
                f"{tuple(x.shape)} differ; a residual block must keep the shape"
            )
        h = h + x  # same shape: the skip connection
    output, act_backward = _trace(block.act, h, tape, _join(path, "act"))  # same shape
    after_backward = None
    if block.bn is not None and bn_after:  # conv -> act -> bn (plain blocks only)
        output, after_backward = _trace(block.bn, output, tape, _join(path, "bn"))  # same shape
    residual = block.residual

    def conv_block_backward(grad: Tensor) -> Tensor:
        if after_backward is not None:
            grad = after_backward(grad)  # dL/d act(h), through the batch norm after the activation
        grad_h = act_backward(grad)  # dL/dh, shaped like h
        grad_branch = grad_h if bn_backward is None else bn_backward(grad_h)  # dL/d conv(x)
        grad_x = conv_backward(grad_branch)  # shaped like x
        return grad_x + grad_h if residual else grad_x  # the skip path's gradient added to the branch's

    return output, conv_block_backward


def _trace_cnn(model: nn.Module, x: Tensor, tape: _Tape, path: str) -> tuple[Tensor, Backward]:
    """``CNN.forward`` by hand: ``head(flatten(pool(blocks(x)), 1))``, and its backward."""
    config = model.config
    if x.dim() != (4 if config.dims == 2 else 3) or x.shape[1] != config.in_channels:
        layout = "(N, C, H, W)" if config.dims == 2 else "(N, C, L)"
        raise ManualGradError(
            f"CNN {path or '(root)'} expects an input of shape {layout} with C={config.in_channels}, got "
            f"{tuple(x.shape)}"
        )
    h, blocks_backward = _trace(model.blocks, x, tape, _join(path, "blocks"))  # (N, width, *spatial)
    pooled, pool_backward = _trace(model.pool, h, tape, _join(path, "pool"))  # (N, width, *pool_size)
    flat = pooled.flatten(1)  # (N, width * pool_size**dims)
    output, head_backward = _trace(model.head, flat, tape, _join(path, "head"))  # (N, num_classes)
    pooled_shape = pooled.shape

    def cnn_backward(grad: Tensor) -> Tensor:
        grad_flat = head_backward(grad)  # (N, width * pool_size**dims)
        grad_pooled = flatten_grad_input(pooled_shape, grad_flat)  # (N, width, *pool_size)
        return blocks_backward(pool_backward(grad_pooled))  # shaped like x

    return output, cnn_backward


def _trace(module: nn.Module, x: Tensor, tape: _Tape, path: str) -> tuple[Tensor, Backward]:
    """Runs ``module`` forward by hand and returns its output and its manual ``dL/dY -> dL/dX``."""
    if type(module) is nn.Sequential:
        backwards = []
        for name, child in module._modules.items():  # named_children() would skip a repeated layer
            x, child_backward = _trace(child, x, tape, _join(path, name))
            backwards.append(child_backward)

        def sequential_backward(grad: Tensor) -> Tensor:
            for child_backward in reversed(backwards):
                grad = child_backward(grad)
            return grad

        return x, sequential_backward
    if type(module) is Residual:
        body_out, body_backward = _trace(module.body, x, tape, _join(path, "body"))
        skip_out, skip_backward = _trace(module.shortcut, x, tape, _join(path, "shortcut"))
        if body_out.shape != skip_out.shape:
            raise ManualGradError(
                f"Residual {path or '(root)'}: body output {tuple(body_out.shape)} and shortcut output "
                f"{tuple(skip_out.shape)} differ; give the shortcut a layer that matches them"
            )
        return body_out + skip_out, lambda grad: body_backward(grad) + skip_backward(grad)
    cnn_type, conv_block_type = _project_types()
    if type(module) is conv_block_type:
        return _trace_conv_block(module, x, tape, path)
    if type(module) is cnn_type:
        return _trace_cnn(module, x, tape, path)
    try:
        rule = rule_for(module)
    except UnsupportedModuleError as err:
        raise UnsupportedModuleError(
            f"network_backward: layer {path or '(root)'}: {err}; containers: {CONTAINERS}"
        ) from None
    state = module_state(module, rule)
    checked_output_shape(module, rule, x, state)  # a clear error naming the layer's problem, before running it
    with torch.no_grad():
        output = rule.forward(module, x, state)
    layer_input = x

    def layer_backward(grad: Tensor) -> Tensor:
        grads = run_rule(rule, module, layer_input, state, grad, tape.impl)
        for name in rule.params:
            if grads.get(name) is not None:
                tape.add(getattr(module, name), grads[name])
        return grads["input"]

    return output, layer_backward


def network_backward(
    model: nn.Module, x: Tensor, grad_output: Tensor, *, impl: str = "fast"
) -> dict[str, Tensor | dict[str, Tensor]]:
    """The full backward pass of a network, by hand: input gradient and every parameter gradient.

    The network must be built from ``nn.Sequential`` (nested at will), :class:`Residual` and supported
    layers (:func:`~diagnostics.manual.supported_module_types`), or be (or contain) one of the project's
    own CNNs (:func:`diagnostics.experiments.models.build_cnn`: ``CNN`` and its ``ConvBlock`` modules, every variant, 1-d and
    2-d), whose forward methods are reproduced step by step. Containers are matched by exact type (a
    subclass may change forward). Batch norm uses the statistics its mode
    selects (batch statistics in training mode) but its running statistics are not updated; nothing in
    the model changes.

    Args:
        model: The network.
        x: Its input.
        grad_output: ``dL/dY``, shaped like ``model(x)``.
        impl: ``"fast"`` or ``"reference"``.

    Returns:
        ``{"input": dL/dX, "parameters": {qualified name: gradient}}`` with the parameters in
        ``model.named_parameters()`` order.

    Raises:
        UnsupportedModuleError: If the network contains a container or layer without a manual rule; the
            message names its type and path.
        ManualGradError: If ``x`` or ``grad_output`` does not fit the network.
    """
    if impl not in IMPLS:
        raise ManualGradError(f"impl={impl!r} must be one of {IMPLS}")
    tape = _Tape(model, impl)
    x = x.detach()
    output, model_backward = _trace(model, x, tape, "")
    if not isinstance(grad_output, Tensor) or grad_output.shape != output.shape or grad_output.dtype != output.dtype:
        shape = tuple(grad_output.shape) if isinstance(grad_output, Tensor) else type(grad_output).__name__
        raise ManualGradError(
            f"grad_output has shape {shape}, but the network maps an input of shape {tuple(x.shape)} to an "
            f"output of shape {tuple(output.shape)} and dtype {output.dtype}"
        )
    grad_input = model_backward(grad_output.detach())
    parameters = {
        name: tape.grads[name] if name in tape.grads else torch.zeros_like(param)
        for name, param in model.named_parameters()
    }
    return {"input": grad_input, "parameters": parameters}

