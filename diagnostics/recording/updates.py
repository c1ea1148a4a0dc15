"""The optimizer's side of a step: W copied before a recorded optimizer step, ‖ΔW‖² after it, the update
ratios of the step's rows, closures.

Optimizers that run the backward inside ``step(closure)`` (LBFGS, Lightning's loops) get their closure wrapped:
the first evaluation of each optimizer step is recorded (by a ``mon.step()`` inside the closure, or else by the
wrapper itself, with the closure's loss); later evaluations of the same step are not steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import MonitorError
from . import native, stats
from .distributed import is_sharded
from .hooks import LiveState
from .layers import LayerTable
from .recorder import OpenStep
from .reductions import local


class OptimizerSteps:
    """Ties a monitor to its (unwrapped) optimizer through step pre/post hooks."""

    def __init__(self, optimizer: torch.optim.Optimizer, table: LayerTable, live: LiveState, fused: bool,
                 open_step: Callable[[], OpenStep | None], record: Callable[..., None],
                 conv_weight: Callable[[str], torch.nn.Parameter | None]) -> None:
        self.optimizer = optimizer
        self.table = table
        self.live = live
        self.fused = fused
        self._open_step = open_step                  # the monitor's step awaiting its update, if any
        self._record = record                        # the monitor's step()
        self._conv_weight = conv_weight
        self._copies: dict[str, torch.Tensor] = {}   # W before the optimizer step, then ΔW
        self._copied: set[str] = set()
        self.closure_depth = 0                       # inside a step(closure) evaluation
        self.closure_evaluations = 0                 # evaluations of the current optimizer step's closure
        self.closure_recorded = False                # the current closure-based step has been recorded

    def held(self) -> set[int]:
        """ids of the parameters the optimizer holds now."""
        return {id(p) for g in self.optimizer.param_groups for p in g["params"]}

    def later_evaluation(self) -> bool:
        """Whether a ``step()`` now comes from a later evaluation of an optimizer step already recorded."""
        return bool(self.closure_depth) and (self.closure_evaluations > 1 or self.closure_recorded)

    def clear(self) -> None:
        self._copies = {}
        self._copied = set()

    def before(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        """Step pre-hook: copy the weights a recorded step will measure ΔW of; wrap a closure."""
        if not self.live.enabled:
            return None
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)    # args[0] is the optimizer
        held = self.held()
        tracked = {p.name for p in self.table.params if id(p.tensor) in held and p.tensor.requires_grad}
        open_step = self._open_step()
        if open_step is not None and open_step.awaiting_update:
            self._copy(open_step.with_grad & tracked)
        elif callable(closure) and self.live.recording:
            self._copy(tracked)                                      # the step is recorded inside the closure
        if not callable(closure):
            return None
        self.closure_evaluations = 0
        self.closure_recorded = False
        wrapped = self._wrap(closure)
        if "closure" in kwargs:
            return args, {**kwargs, "closure": wrapped}
        return (args[0], wrapped, *args[2:]), kwargs

    def _wrap(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        live = self.live

        def wrapped() -> Any:
            self.closure_evaluations += 1
            self.closure_depth += 1
            try:
                result = closure()
            finally:
                self.closure_depth -= 1
            live.drain()
            if live.enabled and self.closure_evaluations == 1 and not self.closure_recorded \
                    and live.backwards != live.backwards_at_step:
                self._record(loss=result if isinstance(result, torch.Tensor) and result.numel() == 1 else None)
            elif live.enabled and self.closure_evaluations > 1:
                live.fresh_buffer()                                  # later evaluations are not a step
                live.backwards_at_step = live.backwards
            return result
        return wrapped

    def _copy(self, names: set[str]) -> None:
        with torch.no_grad():
            # Copy into buffers kept between steps: no fresh allocation (and page faults) per step.
            for param in self.table.params:
                if param.name not in names:
                    continue
                p = local(param.tensor.detach())                  # an FSDP2 shard: this rank's part
                old = self._copies.get(param.name)
                if old is None or old.shape != p.shape or old.device != p.device or old.dtype != p.dtype:
                    self._copies[param.name] = old = torch.empty_like(p)
                old.copy_(p)
        self._copied = set(names)

    def after(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Step post-hook: ‖ΔW‖² of every copied parameter into the step awaiting its update."""
        open_step, copied, self._copied = self._open_step(), self._copied, set()
        if not (self.live.enabled and open_step is not None and open_step.awaiting_update and copied):
            return
        names = copied & open_step.with_grad
        snapshot = {id(self._conv_weight(layer)) for layer in open_step.kernels}    # their ΔW is kept whole
        with torch.no_grad():
            fused: list[tuple[str, torch.Tensor, torch.Tensor]] = []
            for param in self.table.params:
                if param.name not in names:
                    continue
                p, old = local(param.tensor.detach()), self._copies[param.name]
                if is_sharded(param.tensor):
                    open_step.shard_updates.add(param.name)       # summed across the ranks at the next step
                if self.fused and id(param.tensor) not in snapshot and native.eligible_pair(p, old):
                    fused.append((param.name, p, old))           # ‖ΔW‖² in one read of both, ΔW never written
                    continue
                delta = torch.sub(p, old, out=old)               # ΔW in place
                open_step.updates[param.name] = float(stats.squared_norm(delta))
            apply_fused_updates(open_step, fused)
            for layer in open_step.kernels:
                weight = self._conv_weight(layer)
                name = next((q.name for q in self.table.params if q.tensor is weight), None)
                if name in names:
                    open_step.kernel_updates[layer] = self._copies[name].float().cpu().numpy().copy()
        open_step.awaiting_update = False


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a wrapper (accelerate's ``AcceleratedOptimizer``, Lightning's, ...).

    A wrapper may subclass ``torch.optim.Optimizer`` without being initialised as one (accelerate's never calls
    ``Optimizer.__init__``, so it has no step hooks): anything that holds an inner optimizer is unwrapped.
    """
    seen = 0
    while seen < 8:
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer, seen = inner, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise MonitorError(f"optimizer must be a torch.optim.Optimizer (or a wrapper with .optimizer), got "
                           f"{type(optimizer).__name__}")
    return optimizer


def grads_already_unscaled(scaler: Any) -> bool:
    """Whether ``scaler.unscale_(optimizer)`` already ran in this iteration (PyTorch tracks it per optimizer)."""
    states = getattr(scaler, "_per_optimizer_states", None)
    if not states:
        return False
    from torch.amp.grad_scaler import OptState

    return any(s.get("stage") is OptState.UNSCALED for s in states.values())


def update_ratios(open_step: OpenStep) -> None:
    """Fill ``update_ratio`` of the open step's rows from its ‖ΔW‖² (parameters not updated stay NaN, and so
    do shards whose updates could not be combined across the ranks)."""
    updates = {k: v for k, v in open_step.updates.items() if k not in open_step.shard_updates}
    if not updates:
        return
    ratios = {k: stats.ratio(stats.l2_norm(v), open_step.norms.get(k, math.nan)) for k, v in updates.items()}
    data = open_step.params.data
    if data:
        data["update_ratio"] = [ratios.get(n, math.nan) for n in data["param"]]
    layers = open_step.layers.data
    if layers:
        out = []
        for label, norm in zip(layers["layer"], layers["weight_norm"]):
            moved = [updates[p] for p in open_step.groups.get(label, []) if p in updates]
            out.append(stats.ratio(stats.l2_norm(sum(moved)), norm) if moved else math.nan)
        layers["update_ratio"] = out


def apply_fused_updates(open_step: OpenStep, pairs: list[tuple[str, torch.Tensor, torch.Tensor]]) -> None:
    """‖ΔW‖² of (name, after, before) pairs that the fused kernels can read, without writing ΔW."""
    by_dtype: dict[torch.dtype, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
    for item in pairs:
        by_dtype.setdefault(item[1].dtype, []).append(item)
    for items in by_dtype.values():
        squares = native.diff_sums([a for _, a, _ in items], [b for _, _, b in items]).tolist()
        open_step.updates.update(zip([n for n, _, _ in items], squares))
