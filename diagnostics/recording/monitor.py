"""GradientMonitor: attaches to any nn.Module, records per-layer gradient statistics every step, owns every hook.

How it measures:

* Output gradients come from a forward hook that calls ``output.register_hook`` on the module's primary
  output (module full-backward hooks break on in-place ReLU). Each output is reduced to a few sums right in the
  forward hook, before any later in-place operation can change it; nothing keeps a tensor or a graph alive.
* Weight gradients are read from ``p.grad`` in :meth:`GradientMonitor.step`, i.e. after backward, after
  gradient accumulation and after ``GradScaler.unscale_``.
* All sums of a recorded step are moved to the host in one transfer (:mod:`.buffers`, :mod:`.recorder`).
* Passes under ``torch.no_grad()`` and forward passes that backward never reaches are left out; a
  checkpoint's recomputation inside backward is not counted twice (:mod:`.buffers`).
* Optimizers that run the backward inside ``step(closure)`` (LBFGS, Lightning) are recorded once per
  optimizer step, at its first closure evaluation.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..errors import MonitorError, NonFiniteGradientError, StoreError
from ..store import TABLES, ColumnBuffer, RunStore, RunWriter, new_run_id
from . import native
from .blocks import BlockHooks, choose_blocks
from .buffers import Kernels, StepBuffer
from .distributed import check_sharding, sum_across_ranks, world_size
from .hooks import Hooks, LiveState, compiled
from .layers import LayerTable
from .options import RESERVED_METRICS, check_scalar, make_options, run_meta
from .recorder import OpenStep, StepRecorder, write_step
from .updates import OptimizerSteps, grads_already_unscaled, unwrap_optimizer, update_ratios

#: Modules (a monitored model and all its submodules) that have a monitor attached; weak references only.
_ATTACHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _fused_kernels() -> Kernels | None:
    """The fused CPU reductions (built on first use), or None when diagnostics.recording.native is unavailable."""
    return native.kernels()


class GradientMonitor:
    """Record gradient flow through a model: a context manager that owns every hook it adds.

    Example::

        with dx.GradientMonitor(model, store="runs", run_name="my-run", optimizer=opt) as mon:
            for x, y in loader:
                loss = loss_fn(model(x), y)
                loss.backward()
                mon.step(loss=loss, accuracy=acc)   # after backward, before optimizer.step()
                opt.step(); opt.zero_grad()
        frame = mon.frame()

    A row of the layer table is a leaf module that ran, or a module that directly owns a parameter that
    received a gradient (its ``weight_*`` columns are over all its own parameters not named ``bias*``, as one
    vector). A parameter shared by several modules is counted once, in its first owner's row.

    Args:
        model: Any ``nn.Module`` (also wrapped by DDP or ``torch.compile``: their prefixes are left out of names).
        store: A :class:`RunStore` or a folder path to write the run to (``None`` keeps it in memory only).
        run_name: Human name of the run (default: the model's class name).
        every: Record every ``every``-th step only (step 0, every, 2*every, ...).
        first_step: The number of the first step: a resumed training passes its global step, so that its run
            lines up with the first one on the pages (and ``every`` counts from step 0).
        optimizer: Needed for ``update_ratio`` (‖ΔW‖/‖W‖ of the optimizer step after a recorded backward) and
            ``in_optimizer``. Wrappers with an ``.optimizer`` attribute are unwrapped. With ``step(closure)``
            optimizers (LBFGS) each optimizer step is recorded once, at its first closure evaluation.
        scaler: A ``torch.amp.GradScaler``; gradients are then reported unscaled.
        layers: Row names or ``fnmatch`` patterns to record (default all).
        layer_types: Module classes to record (default all).
        histogram_every: Every this many steps also store log10|g| histograms of weight and output gradients.
        on_nonfinite: ``"warn"`` (default), ``"raise"`` (:class:`NonFiniteGradientError` from ``step()``,
            after the step was stored) or ``"ignore"``.
        kernels: Conv layers whose full ∂L/∂W, W and ΔW are snapshotted: names, ``"auto"`` or ``None``.
        kernel_every: Snapshot every this many steps.
        kernel_max_mb: Size budget of all snapshots of the run (see :class:`.snapshots.KernelSnapshots`).
        meta: Extra JSON-serialisable metadata for the run.
        flush_every: Write the store every this many recorded steps (and at least every 2 s). ``None`` (default):
            about once a second whatever the step time (see :class:`RunWriter`); the dashboard sees a live run.
        activations: Also record activation and output-gradient statistics (with ``False`` only the
            parameters are read; which layers ran is still tracked).
        weight_norms: Also record ‖W‖ (one more read of the weights); an ``optimizer`` keeps them on.
        distributed: Under DistributedDataParallel, ``True`` or a process group: activation statistics of all
            ranks are combined once per step so that they equal one process on the global batch. Every rank
            constructs and steps its monitor the same way; only rank 0 should pass a ``store``.
        fused: Reduce contiguous float32/float64 CPU tensors with the fused one-pass kernels of
            :mod:`diagnostics.recording.native` (``False``: PyTorch reductions only; same statistics).
        unit_activity: Also record ``dead_units``, the fraction of each layer's units (channels or features)
            not active in its last ``unit_window`` recorded steps (:mod:`.units`; one more read of each output).
    """

    def __init__(self, model: nn.Module, store: RunStore | str | os.PathLike[str] | None = None,
                 run_name: str | None = None, *, every: int = 1, first_step: int = 0, optimizer: Any = None,
                 scaler: Any = None,
                 layers: Sequence[str] | None = None,
                 layer_types: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
                 histogram_every: int = 0, on_nonfinite: str = "warn",
                 kernels: Sequence[str] | str | None = None, kernel_every: int = 50,
                 kernel_max_mb: float = 256.0, meta: Mapping[str, Any] | None = None,
                 flush_every: int | None = None, activations: bool = True, weight_norms: bool = True,
                 distributed: bool | Any = False, fused: bool = True, eager_every: int = 10,
                 blocks: Any = None, unit_activity: bool = False, unit_window: int = 20) -> None:
        if not isinstance(model, nn.Module):
            raise MonitorError(f"GradientMonitor needs an nn.Module, got {type(model).__name__}")
        self.options = make_options(
            every=every, first_step=first_step, layers=layers, layer_types=layer_types, histogram_every=histogram_every,
            on_nonfinite=on_nonfinite, kernels=kernels, kernel_every=kernel_every, kernel_max_mb=kernel_max_mb,
            flush_every=flush_every, activations=activations,
            weight_norms=bool(weight_norms) or optimizer is not None, distributed=distributed, fused=fused,
            eager_every=eager_every, blocks=blocks, unit_activity=unit_activity, unit_window=unit_window, meta=meta)
        if store is not None and not isinstance(store, RunStore):
            if not isinstance(store, (str, os.PathLike)):
                raise MonitorError(f"store must be a RunStore or a folder path, got {type(store).__name__}")
            store = RunStore(store)
        if run_name is not None and not isinstance(run_name, str):
            raise MonitorError(f"run_name must be a string, got {type(run_name).__name__}")
        self.model = model
        self.store = store
        self.run_name = run_name or type(model).__name__
        self.every = self.options.every
        self.optimizer = None if optimizer is None else unwrap_optimizer(optimizer)
        self.scaler = scaler
        self.table = LayerTable(model, self.options.layers, self.options.layer_types)
        if self.optimizer is not None:
            held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
            if not any(id(p.tensor) in held for p in self.table.params):
                raise MonitorError("the optimizer holds none of this model's parameters: pass the optimizer that "
                                   "trains this model (update ratios would all read 0, 'no update')")
        self._group = None if isinstance(distributed, bool) else distributed
        self.run_id: str | None = None
        opts = self.options
        self._live = LiveState(activations=opts.activations, histogram_every=opts.histogram_every,
                               units=opts.unit_activity, step=opts.first_step,
                               recording=opts.first_step % opts.every == 0)
        self._hooks = Hooks(self.table, self._live)    # the one owner of every hook handle
        self._fused: Kernels | None = None
        self._live.arena_rows = max(256, 4 * len(self.table.rows))
        self._recorder: StepRecorder | None = None
        self._writer: RunWriter | None = None
        self._memory: dict[str, ColumnBuffer] | None = {t: ColumnBuffer() for t in TABLES}
        self._open: OpenStep | None = None
        self._warned_nonfinite = False
        self._updates: OptimizerSteps | None = None
        self.compiled = compiled(model)
        self._blocks = None if blocks is None else BlockHooks(
            choose_blocks([(n, r.module) for n, r in self.table.rows.items()], blocks), blocks == "same-shape",
            self._live)
        self._recorded = 0                    # recorded steps so far

    # -- lifecycle -----------------------------------------------------------------------------------------
    def __enter__(self) -> GradientMonitor:
        self.attach()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.detach(status="finished" if exc_type is None else "crashed",
                    error=None if exc is None else f"{type(exc).__name__}: {exc}")

    def attach(self) -> None:
        """Add the hooks and open the run. On any failure nothing stays attached and :class:`MonitorError`
        says why (also when a monitor is already attached to this model)."""
        if self._live.enabled or len(self._hooks):
            raise MonitorError("this GradientMonitor is already attached; use one `with` block per monitor")
        if any(module in _ATTACHED for module in self.model.modules()):
            raise MonitorError(
                f"{type(self.model).__name__} (or one of its submodules) already has a GradientMonitor attached; "
                "leave the first monitor's `with` block (or call detach()) before attaching another")
        check_sharding([p.tensor for p in self.table.params], self.options.distributed, self._group)
        try:
            self._fused = _fused_kernels() if self.options.fused else None
            self._live.kernels = self._fused
            self._live.watch = self._fused.GradWatch() if self._fused is not None else None
            self._hooks.attach(self.model, leaves=not self.compiled)
            for handle in self._blocks.handles() if self._blocks is not None else ():
                self._hooks.add(handle)
            self._recorder = StepRecorder(self.table, self.options, self._group, self._fused is not None,
                                          self._live.scratch)
            if self.optimizer is not None:
                self._updates = OptimizerSteps(self.optimizer, self.table, self._live, self._fused is not None,
                                               lambda: self._open, self.step, self._recorder.conv_weight)
                self._hooks.add(self.optimizer.register_step_pre_hook(self._updates.before))
                self._hooks.add(self.optimizer.register_step_post_hook(self._updates.after))
            self._live.fresh_buffer()
            self._open_run()
            if self.store is None and self.options.distributed and world_size(self._group) > 1 \
                    and torch.distributed.get_rank(self._group) != 0:
                self._memory = None                     # rank 0 keeps the run; the others would only grow
        except BaseException as exc:
            self._remove_hooks()
            self._writer = self._updates = None
            if isinstance(exc, (StoreError, OSError)):
                raise MonitorError(f"the run could not be created in {self.store!r}: {exc}. Pass a writable "
                                   "folder (or a RunStore) as store=") from exc
            raise
        _ATTACHED.update(self.model.modules())
        self._live.enabled = True
        self._live.refresh()
        self._begin_eager_step()

    def _open_run(self) -> None:
        if self.store is None:
            self.run_id = new_run_id(self.run_name)
            return
        meta = run_meta(self.model, self.table.root_type, self.options, self._fused is not None, self.compiled)
        self._writer = self.store.create_run(self.run_name, meta, flush_every=self.options.flush_every)
        self.run_id = self._writer.run_id

    def detach(self, status: str = "finished", error: str | None = None) -> None:
        """Remove every hook (idempotent), store the last step and close the run."""
        self._live.enabled = False
        self._live.refresh()
        self._end_eager_step()
        self._remove_hooks()
        for module in self.model.modules():
            _ATTACHED.discard(module)
        try:
            if status == "finished":
                self._finish_shard_updates()
            self._commit_open()
        finally:
            if self._updates is not None:
                self._updates.clear()
            if self._writer is not None:
                if error:
                    self._writer.meta["error"] = error
                self._writer.close(status=status)

    def _remove_hooks(self) -> None:
        self._hooks.remove()

    # -- the step ------------------------------------------------------------------------------------------
    def step(self, loss: Any = None, **metrics: Any) -> None:
        """Close the current step: read weight gradients, reduce, store. Call after backward, before the
        optimizer step. Any keyword becomes a per-step metric column (numbers or 1-element tensors).

        Inside an optimizer's ``step(closure)``, only the first call per optimizer step records.
        """
        if not self._live.enabled:
            raise MonitorError("step() was called outside the monitor's `with` block (or after detach())")
        if loss is not None:
            check_scalar("loss", loss)
        for key, value in metrics.items():
            if key in RESERVED_METRICS:
                raise MonitorError(f"step(): the metric name {key!r} is a column the monitor writes itself; "
                                   f"rename it (reserved: {sorted(RESERVED_METRICS)})")
            check_scalar(f"metric {key!r}", value)
        self._live.drain()                            # what the C++ output-gradient hooks logged
        updates = self._updates
        if updates is not None and updates.later_evaluation():
            self._live.fresh_buffer()                 # a later evaluation of the same optimizer step
            self._live.backwards_at_step = self._live.backwards
            return
        self._check_backward()
        eager = self._end_eager_step()
        if updates is not None and updates.closure_depth:
            updates.closure_recorded = True
        self._live.backwards_at_step = self._live.backwards
        previous, self._open = self._open, None
        if previous is not None and not previous.shard_updates:
            self._commit(previous)                      # its update is known: store it now
            previous = None
        step = self._live.step
        buf = self._live.buffer
        if buf.arena is not None and buf.used >= len(buf.arena):    # it overflowed: give the next step twice
            self._live.arena_rows = 2 * len(buf.arena)
        self._live.fresh_buffer()
        self._live.step += 1
        recorded = self._live.recording
        self._live.recording = self._live.step % self.options.every == 0
        self._live.refresh()
        if recorded:
            self._recorded += 1
            if self.compiled:                           # which steps have activation statistics
                metrics = {**metrics, "activation_stats": float(eager)}
            self._record(step, buf, loss, metrics, previous)
        elif self._blocks is not None:
            self._blocks.take()
            self._open = previous
        else:
            self._open = previous                       # FSDP2 shard updates wait for the next recorded step
        self._begin_eager_step()

    def _begin_eager_step(self) -> None:
        """On a compiled model, run the next step eagerly with the leaves hooked when it is an activation step."""
        opts = self.options
        if self.compiled and opts.activations and self._live.enabled and self._live.recording \
                and self._recorded % opts.eager_every == 0:
            self._hooks.begin_eager()

    def _end_eager_step(self) -> bool:
        """Leave a compiled model's eager step; whether the step had activation hooks."""
        if self.compiled:
            return self._hooks.end_eager()
        return self.options.activations

    def _check_backward(self) -> None:
        if self._live.backwards != self._live.backwards_at_step:
            return
        if self._live.backwards > 0:
            raise MonitorError("step() was called twice after one backward pass: call it once per training "
                               "step, after loss.backward() and before optimizer.step()")
        trainable = [p.tensor for p in self.table.params if p.tensor.requires_grad]
        if trainable and all(p.grad is None for p in trainable):
            raise MonitorError("step() was called before any backward pass: call loss.backward() first, then "
                               "step(), then optimizer.step()")

    def _record(self, step: int, buf: StepBuffer, loss: Any, metrics: Mapping[str, Any],
                previous: OpenStep | None) -> None:
        scale = weight_scale = 1.0
        if self.scaler is not None and getattr(self.scaler, "is_enabled", lambda: True)():
            scale = float(self.scaler.get_scale())
            weight_scale = 1.0 if grads_already_unscaled(self.scaler) else scale
        in_optimizer = None if self._updates is None else self._updates.held()
        open_step = self._recorder.record(
            step, buf, loss, metrics, scale=scale, weight_scale=weight_scale, in_optimizer=in_optimizer,
            writer=self._writer, histogram=self._live.histogram_step(step),
            awaiting_update=self.optimizer is not None, previous=previous,
            blocks=None if self._blocks is None else (self._blocks.take(), self._blocks))
        if previous is not None:
            self._commit(previous)                      # its shard updates were combined with this step
        self._open = open_step
        if self.optimizer is None:
            self._commit_open()
        self._report_nonfinite(step, open_step.nonfinite_forward, open_step.nonfinite_backward)

    def _commit_open(self) -> None:
        """Store the last recorded step (with its update ratio once the optimizer step is known)."""
        open_step, self._open = self._open, None
        if open_step is not None:
            self._commit(open_step)

    def _finish_shard_updates(self) -> None:
        """On a normal exit, combine the last step's FSDP2 shard updates across the ranks (two collectives).

        Never on an exception path: another rank may not reach the collective, and waiting would hang.
        """
        open_step = self._open
        if open_step is not None and open_step.shard_updates and world_size(self._group) > 1:
            names = sorted(open_step.shard_updates)
            open_step.updates.update(zip(names, sum_across_ranks([open_step.updates[n] for n in names], names,
                                                                 self._group)))
            open_step.shard_updates = set()

    def _commit(self, open_step: OpenStep) -> None:
        """Store one recorded step's rows (with the update ratios known by now)."""
        update_ratios(open_step)
        write_step(open_step, self.run_id or "", self._writer, self._memory, len(self._recorder.depth))

    def _report_nonfinite(self, step: int, forward: str | None, backward: str | None) -> None:
        if forward is None and backward is None:
            return
        where = [f"in the {phase} pass first at layer {layer!r}" for phase, layer in
                 (("forward", forward), ("backward", backward)) if layer is not None]
        message = f"non-finite values (NaN/Inf) at step {step}: " + " and ".join(where)
        if self._writer is not None and "first_nonfinite" not in self._writer.meta:
            self._writer.meta["first_nonfinite"] = {"step": step, "forward": forward, "backward": backward}
        if self.options.on_nonfinite == "raise":
            self._commit_open()
            if self._writer is not None:
                self._writer.flush()
            phase, layer = ("forward", forward) if forward is not None else ("backward", backward)
            raise NonFiniteGradientError(message + ". Lower the learning rate, check the inputs, or clip "
                                         "gradients.", step=step, layer=str(layer), phase=phase)
        if self.options.on_nonfinite == "warn" and not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(message + " (further occurrences are recorded without warning)", RuntimeWarning,
                          stacklevel=3)

    # -- results -------------------------------------------------------------------------------------------
    def annotate(self, **metrics: Any) -> bool:
        """Add per-step metrics known only after the optimizer step (a framework's logged values) to the step
        ``step()`` recorded last, while it waits for its update. ``loss`` may be given here too.

        Returns:
            False when that step was not recorded (``every``) or is already stored; nothing is changed then.
        """
        for key, value in metrics.items():
            if key in RESERVED_METRICS and key != "loss":
                raise MonitorError(f"annotate(): the metric name {key!r} is a column the monitor writes itself")
            check_scalar(f"metric {key!r}", value)
        if self._open is None:
            return False
        for key, value in metrics.items():
            self._open.steps[key] = float(value.detach().float().cpu()) if isinstance(value, torch.Tensor) \
                else float(value)
        return True

    @property
    def steps_seen(self) -> int:
        """How many steps were closed (optimizer steps for ``step(closure)`` optimizers)."""
        return self._live.step - self.options.first_step

    def _collect(self, table: str) -> pd.DataFrame:
        if self.store is not None and self._writer is not None:
            self._writer.flush()
            reader = {"layers": lambda: self.store.frame(self.run_id, join_steps=False),
                      "steps": lambda: self.store.step_frame(self.run_id),
                      "params": lambda: self.store.param_frame(self.run_id),
                      "hist": lambda: self.store.histogram_frame(self.run_id),
                      "blocks": lambda: self.store.block_frame(self.run_id)}[table]
            return reader()
        if self._memory is None:
            warnings.warn("this rank keeps no rows (distributed, no store); read the run on rank 0 or from its "
                          "store", RuntimeWarning, stacklevel=3)
            return pd.DataFrame()
        buffer = self._memory[table]
        if not len(buffer):
            return pd.DataFrame()
        return buffer.to_table().to_pandas()

    def frame(self) -> pd.DataFrame:
        """One row per (step, layer) with the per-step columns (loss, metrics, total norm) joined in."""
        self._commit_if_finished()
        layers = self._collect("layers")
        steps = self._collect("steps")
        if layers.empty and not steps.empty:
            warnings.warn(f"{len(steps)} steps were recorded but no layer row: no parameter received a gradient and "
                          "no hooked layer ran a forward pass that backward reached (check layers=/layer_types=, "
                          "and that the model's forward calls its modules)", RuntimeWarning, stacklevel=2)
        if layers.empty or steps.empty:
            return layers
        extra = [c for c in steps.columns if c not in layers.columns]
        frame = layers.merge(steps[["step", *extra]], on="step", how="left")
        return frame.sort_values(["step", "depth"], kind="stable").reset_index(drop=True)

    def step_frame(self) -> pd.DataFrame:
        """One row per recorded step: loss, metrics, total gradient norm, first non-finite layers."""
        self._commit_if_finished()
        return self._collect("steps")

    def param_frame(self) -> pd.DataFrame:
        """One row per (step, parameter) for every parameter that had a gradient (shared ones once)."""
        self._commit_if_finished()
        return self._collect("params")

    def histogram_frame(self) -> pd.DataFrame:
        """The recorded log10|g| histograms (see :data:`diagnostics.recording.stats.HIST_EDGES`)."""
        self._commit_if_finished()
        return self._collect("hist")

    def block_frame(self) -> pd.DataFrame:
        """Backward gain per (step, block), with ``blocks=`` (see :mod:`diagnostics.recording.blocks`)."""
        self._commit_if_finished()
        return self._collect("blocks")

    def _commit_if_finished(self) -> None:
        # A step still waiting for its optimizer update is included with update_ratio NaN only once the
        # monitor is closed; while attached it is committed as soon as the next step() or exit comes.
        if not self._live.enabled:
            self._commit_open()

