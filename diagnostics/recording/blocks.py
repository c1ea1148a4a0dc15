"""Backward gain per block: how much the gradient grows or shrinks crossing a block, and through which path.

For a block M with input x and output y, its **backward gain** is ‖∂L/∂x‖ / ‖∂L/∂y‖. A plain stack multiplies
gains below 1 into a vanishing gradient. In a residual block ``y = act(s)``, ``s = skip(x) + f(x)``, the gradient
at x is what comes through the skip plus what comes through the branch, so the gain stays near 1; the **branch
share** ‖∂L/∂x − g_skip‖ / ‖∂L/∂x‖ says how much of it came through the branch, where g_skip is what reaches x
through the skip: for an identity skip ∂L/∂s (the gradient at the branch's last module's output), for a
projection skip the gradient at the projection's input.

How it is measured, per call of a block: a forward pre-hook hands the block a view of its input (free) whose
gradient is exactly what reaches x *through this block* (also when x feeds other modules too); a forward hook
hooks the output; for registered residual blocks, the branch's last module's output and the projection's input
are hooked the same way. Tensors are reduced to squared norms as their gradients arrive; g_skip is kept only until
∂L/∂x arrives (the one inner product needs both). A block whose input needs no gradient (the first one, fed by
the data) has no gain: absent, not zero.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import MonitorError
from .hooks import graph_task_id


@dataclass(frozen=True)
class ResidualRule:
    """How to find a residual block's branch end and skip projection."""

    branch_end: Callable[[nn.Module], nn.Module | None]      # the module whose output is the branch's last
    projection: Callable[[nn.Module], nn.Module | None]      # the skip's projection (None: identity skip)
    residual: Callable[[nn.Module], bool] = lambda m: True   # whether this instance has a skip at all


#: Registered residual block types, by ``module.qualname`` of their class. Written once, refusing overwrites.
RESIDUAL_BLOCKS: dict[str, ResidualRule] = {}


def register_residual_block(class_path: str, rule: ResidualRule) -> None:
    """Register a residual block type (``"package.module.ClassName"``); a second registration is refused."""
    if class_path in RESIDUAL_BLOCKS:
        raise MonitorError(f"{class_path} is already registered as a residual block")
    RESIDUAL_BLOCKS[class_path] = rule


register_residual_block("diagnostics.experiments.models.ConvBlock", ResidualRule(
    branch_end=lambda m: m.bn if m.bn is not None else m.conv, projection=lambda m: None,
    residual=lambda m: m.residual))
register_residual_block("torchvision.models.resnet.BasicBlock", ResidualRule(
    branch_end=lambda m: m.bn2, projection=lambda m: m.downsample))
register_residual_block("torchvision.models.resnet.Bottleneck", ResidualRule(
    branch_end=lambda m: m.bn3, projection=lambda m: m.downsample))


def class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def choose_blocks(named: Sequence[tuple[str, nn.Module]], wanted: Any) -> list[tuple[str, nn.Module]]:
    """The blocks to measure: ``"auto"`` (registered block types), ``"same-shape"`` (every non-leaf module whose
    input and output shapes match, decided at its first call), or names/fnmatch patterns/module classes."""
    inner = [(n, m) for n, m in named if next(m.children(), None) is not None and n]
    if wanted == "auto":
        found = [(n, m) for n, m in inner if class_path(m) in RESIDUAL_BLOCKS]
    elif wanted == "same-shape":
        found = inner
    else:
        items = list(wanted) if isinstance(wanted, (list, tuple)) else [wanted]
        names = [w for w in items if isinstance(w, str)]
        types = tuple(w for w in items if isinstance(w, type))
        found = [(n, m) for n, m in named if n and (any(fnmatch.fnmatchcase(n, p) for p in names)
                                                    or (types and isinstance(m, types)))]
    if not found:
        raise MonitorError(f"blocks={wanted!r} matches no module of this model; give block names (e.g. "
                           "['layer1.0']), module classes, 'auto' (this project's ConvBlock, torchvision's "
                           "BasicBlock/Bottleneck) or 'same-shape'")
    return found


@dataclass
class BlockCall:
    """One call of a block during a step: squared gradient norms as they arrive in backward."""

    in_sq: torch.Tensor | None = None          # ‖∂L/∂x‖² (None: x needed no gradient)
    out_sq: torch.Tensor | None = None         # ‖∂L/∂y‖²
    branch_sq: torch.Tensor | None = None      # ‖∂L/∂x − g_skip‖²
    skip: torch.Tensor | None = None           # g_skip, until ∂L/∂x arrives
    has_input: bool = False                    # x required a gradient


@dataclass
class BlockState:
    """What the block hooks gathered in one step."""

    calls: dict[str, list[BlockCall]] = field(default_factory=dict)
    open: dict[str, BlockCall] = field(default_factory=dict)      # block -> its call running now (forward)


def _sq(g: torch.Tensor) -> torch.Tensor:
    flat = g.detach().reshape(-1).to(torch.float64)
    return torch.dot(flat, flat)


class BlockHooks:
    """Adds the hooks of the measured blocks (through the monitor's one hook owner) and fills a BlockState."""

    def __init__(self, blocks: list[tuple[str, nn.Module]], same_shape: bool, live: Any) -> None:
        self.blocks = blocks
        self.same_shape = same_shape
        self.live = live                               # the monitor's LiveState (enabled, recording)
        self.state = BlockState()
        self.shape_ok: dict[str, bool] = {}
        self.residual: dict[str, bool] = {}
        self.projected: dict[str, bool] = {}

    def handles(self) -> list[Any]:
        """Register every hook; the caller keeps the handles."""
        out = []
        for name, block in self.blocks:
            rule = RESIDUAL_BLOCKS.get(class_path(block))
            residual = rule is not None and rule.residual(block)
            self.residual[name] = residual
            self.projected[name] = residual and rule.projection(block) is not None
            out.append(block.register_forward_pre_hook(self._pre(name)))
            out.append(block.register_forward_hook(self._post(name)))
            if residual:
                out.append(rule.branch_end(block).register_forward_hook(self._branch_end(name)))
                projection = rule.projection(block)
                if projection is not None:
                    out.append(projection.register_forward_pre_hook(self._projection(name)))
        return out

    def _active(self) -> bool:
        return self.live.enabled and self.live.recording and torch.is_grad_enabled() \
            and graph_task_id() == -1

    def _pre(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if not self._active() or not args or not isinstance(args[0], torch.Tensor):
                return None
            call = BlockCall()
            self.state.open[name] = call
            x = args[0]
            if not x.requires_grad:
                return None
            call.has_input = True
            view = x.view_as(x)                                  # its gradient: what reaches x through the block

            def grad(g: torch.Tensor) -> None:
                call.in_sq = _sq(g)
                if call.skip is not None:
                    call.branch_sq = _sq(g.detach() - call.skip)
                    call.skip = None
            view.register_hook(grad)
            return (view, *args[1:])
        return hook

    def _post(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            call = self.state.open.pop(name, None)
            if call is None:
                return
            y = output if isinstance(output, torch.Tensor) else None
            if self.same_shape and name not in self.shape_ok:
                self.shape_ok[name] = bool(y is not None and args and isinstance(args[0], torch.Tensor)
                                           and y.shape == args[0].shape)
            if y is None or not y.requires_grad or (self.same_shape and not self.shape_ok[name]):
                return
            self.state.calls.setdefault(name, []).append(call)

            def grad(g: torch.Tensor) -> None:
                call.out_sq = _sq(g)
            y.register_hook(grad)
        return hook

    def _branch_end(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            call = self.state.open.get(name)
            if call is None or not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            if self.projected[name]:
                return                                           # g_skip comes from the projection instead

            def grad(g: torch.Tensor) -> None:
                call.skip = g.detach()                          # ∂L/∂s: what the identity skip carries to x
            output.register_hook(grad)
        return hook

    def _projection(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            call = self.state.open.get(name)
            if call is None or not args or not isinstance(args[0], torch.Tensor) or not args[0].requires_grad:
                return None
            view = args[0].view_as(args[0])

            def grad(g: torch.Tensor) -> None:
                call.skip = g.detach()                          # what reaches x through the projection
            view.register_hook(grad)
            return (view, *args[1:])
        return hook

    def types(self) -> dict[str, str]:
        return {name: type(block).__name__ for name, block in self.blocks}

    def take(self) -> BlockState:
        """This step's calls; a fresh state for the next step."""
        state, self.state = self.state, BlockState()
        return state
