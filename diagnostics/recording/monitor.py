"""GradientMonitor: attaches to any nn.Module, records per-layer gradient statistics every step, owns every hook.

How it measures (see ``../shared/STYLE.md``):

* Output gradients come from a forward hook that calls ``output.register_hook`` (module full-backward hooks
  break on in-place ReLU). Each output is reduced to a few sums right in the forward hook, before any later
  in-place operation can change it; nothing keeps a tensor or a graph alive.
* Weight gradients are read from ``p.grad`` in :meth:`GradientMonitor.step`, i.e. after backward, after
  gradient accumulation and after ``GradScaler.unscale_``.
* All sums of a recorded step are moved to the host in one transfer; on CPU a layer whose sums are finite
  skips the non-finite counting pass.
* Contiguous float32/float64 CPU tensors are reduced by the fused one-pass kernels of :mod:`.native`
  (every statistic of a tensor from one read) into a per-step host array, the arena of ``_StepBuffer``; all
  parameters of a step go through one call. Everything else, and every tensor when the kernels cannot be
  built, uses the PyTorch reductions of :mod:`.stats`.
* Passes under ``torch.no_grad()`` are ignored; an eval-mode pass counts only if backward reaches it.
"""

from __future__ import annotations

import fnmatch
import math
import zlib
import time
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from . import native, stats
from ..errors import MonitorError, NonFiniteGradientError
from ..store import ColumnBuffer, RunStore, RunWriter

#: Modules (a monitored model and all its submodules) that have a monitor attached; weak references only.
_ATTACHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


@dataclass
class _Call:
    """The reductions of one tensor from one call of a layer (device tensors until the step's transfer)."""

    numel: int
    #: (3,) device tensor (see stats.activation_sums / stats.gradient_sums); or, from the fused CPU kernels,
    #: a (4,) float64 host row whose last value is the NaN/Inf count (``nonfinite`` is then None).
    sums: torch.Tensor | np.ndarray
    nonfinite: torch.Tensor | int | None
    seq: int                           # order of the call within the step's forward or backward pass


#: dtype -> (activation kernel, gradient kernel) of diagnostics.native, for the fused path of the hooks.
_Kernels = dict[torch.dtype, tuple[Callable[[int, int, int], None], Callable[[int, int, int], None]]]


@dataclass
class _StepBuffer:
    """Everything gathered between two ``step()`` calls, still on the device (or in ``arena`` on the host)."""

    acts: dict[str, list[_Call]] = field(default_factory=lambda: defaultdict(list))
    grads: dict[str, list[_Call]] = field(default_factory=lambda: defaultdict(list))
    act_grad_hist: dict[str, torch.Tensor] = field(default_factory=dict)
    ran: set[str] = field(default_factory=set)        # layers that ran (tracked when activations are off)
    forward_seq: int = 0
    backward_seq: int = 0
    kernels: _Kernels | None = None                   # the fused CPU kernels, when they can be used
    arena: np.ndarray | None = None                   # (capacity, 4) float64 rows they write into
    base: int = 0                                     # address of arena
    used: int = 0                                     # rows of arena taken

    @classmethod
    def create(cls, kernels: _Kernels | None, capacity: int) -> _StepBuffer:
        if kernels is None:
            return cls()
        arena = np.empty((capacity, 4), dtype=np.float64)
        return cls(kernels=kernels, arena=arena, base=arena.ctypes.data)

    def fused(self, x: torch.Tensor, seq: int, kind: int) -> _Call | None:
        """Reduce a contiguous CPU tensor in one pass into the next arena row (kind 0: activation, 1: gradient).

        None where the fused path cannot take ``x`` (other device or dtype, strided, arena full): the caller
        then uses the PyTorch reductions. Kept to a few attribute reads: it runs for every hooked tensor.
        """
        k = self.used
        if self.kernels is None or k >= len(self.arena) or not x.is_cpu or not x.is_contiguous() or x.is_neg():
            return None
        fns = self.kernels.get(x.dtype)
        if fns is None:
            return None
        self.used = k + 1                                   # taken before the call, which releases the GIL
        n = x.numel()
        fns[kind](x.data_ptr(), n, self.base + 32 * k)      # row k = [4 float64]
        return _Call(n, self.arena[k], None, seq)


class _Transfer:
    """Collects device tensors and moves them to the host together (one copy per device).

    Plain Python numbers (e.g. a non-finite count already known on the host) are kept aside, never turned
    into tensors.
    """

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []
        self._starts: list[int] = []
        self._host: dict[int, float] = {}
        self._arrays: list[tuple[int, np.ndarray]] = []
        self._size = 0

    def add(self, value: torch.Tensor | np.ndarray | int | float) -> int:
        """Queue a number, a 0-dim or a 1-D tensor, or a host array; returns its offset in the fetched array."""
        offset = self._size
        if isinstance(value, np.ndarray):
            self._arrays.append((offset, value.reshape(-1)))
            self._size += value.size
        elif isinstance(value, torch.Tensor):
            flat = value.detach().reshape(-1)
            self._parts.append(flat)
            self._starts.append(offset)
            self._size += flat.numel()
        else:
            self._host[offset] = float(value)
            self._size += 1
        return offset

    def fetch(self) -> np.ndarray:
        """All queued values as one float64 array on the host."""
        out = np.empty(self._size, dtype=np.float64)
        for offset, value in self._host.items():
            out[offset] = value
        for offset, array in self._arrays:
            out[offset:offset + array.size] = array
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
        for i, part in enumerate(self._parts):
            groups[(part.device, part.dtype)].append(i)
        for indices in groups.values():
            # One concatenation and one copy to the host per (device, dtype), converted once.
            joined = torch.cat([self._parts[i] for i in indices]).cpu().to(torch.float64).numpy()
            pos = 0
            for i in indices:
                n = self._parts[i].numel()
                out[self._starts[i]:self._starts[i] + n] = joined[pos:pos + n]
                pos += n
        return out


class _Scratch:
    """Reusable 1-D work buffers, one per (device, dtype), grown to the largest tensor seen."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor | None:
        if x.dtype not in (torch.float32, torch.float64):
            return None
        key = (x.device, x.dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < x.numel():
            buf = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
            self._buffers[key] = buf
        return buf


def _all_reduce_step(buf: _StepBuffer, group: Any = None) -> None:
    """Combine one step's per-call sums across the processes of ``group``, in place, outside any hook.

    Σx, Σx², non-zero, element and NaN/Inf counts are added; maxima take the maximum. Each rank's loss
    averages only its local batch, so a local output gradient is ``W`` times the gradient of the global mean
    loss: Σ|g| is divided by W, Σg² by W², max|g| by W. The result equals one process on the global batch.
    Two collectives per step (plus one small consistency check).
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    for calls in (*buf.acts.values(), *buf.grads.values()):   # host rows of the fused kernels -> tensors
        for i, c in enumerate(calls):
            if c.nonfinite is None:
                calls[i] = replace(c, sums=torch.from_numpy(np.array(c.sums[:3])), nonfinite=int(c.sums[3]))
    acts = [(name, i, call) for name in sorted(buf.acts) for i, call in enumerate(buf.acts[name])]
    grads = [(name, i, call) for name in sorted(buf.grads) for i, call in enumerate(buf.grads[name])]
    calls = [c for _, _, c in acts + grads]
    if not calls:
        return
    device = calls[0].sums.device
    layout = "|".join(f"a:{n}:{i}" for n, i, _ in acts) + "#" + "|".join(f"g:{n}:{i}" for n, i, _ in grads)
    signature = float(zlib.crc32(layout.encode()))
    check = torch.tensor([signature, -signature, len(calls), -len(calls)], dtype=torch.float64, device=device)
    dist.all_reduce(check, op=dist.ReduceOp.MAX, group=group)
    if check[0] != -check[1] or check[2] != -check[3]:
        raise MonitorError("the ranks recorded different layers or call counts in one step; every rank must run "
                           "the same model code on a batch of the same shape")

    def nonfinite(call: Any) -> torch.Tensor:
        value = call.nonfinite
        if isinstance(value, torch.Tensor):
            return value.to(device=device, dtype=torch.float64).reshape(1)
        return torch.tensor([float(value)], dtype=torch.float64, device=device)

    numel = [torch.tensor([float(c.numel)], dtype=torch.float64, device=device) for c in calls]
    added = torch.cat([                                                 # every additive number, in order
        *(torch.cat([c.sums.to(torch.float64), n, nonfinite(c)]) for c, n in zip(calls[:len(acts)], numel)),
        *(torch.cat([c.sums[:2].to(torch.float64), n, nonfinite(c)]) for c, n in
          zip(calls[len(acts):], numel[len(acts):])),
    ])                                                                  # (5 * acts + 4 * grads,)
    maxima = torch.stack([c.sums[2].to(torch.float64) for c in calls[len(acts):]]) if grads else None
    dist.all_reduce(added, group=group)
    if maxima is not None:
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=group)
    pos = 0
    for name, i, call in acts:
        s = added[pos:pos + 5]
        buf.acts[name][i] = replace(call, numel=int(s[3].item()), sums=s[:3].clone(), nonfinite=int(s[4].item()))
        pos += 5
    for k, (name, i, call) in enumerate(grads):
        s = added[pos:pos + 4]
        sums = torch.stack([s[0] / world, s[1] / world**2, maxima[k] / world])  # (3,) of the global mean loss
        buf.grads[name][i] = replace(call, numel=int(s[2].item()), sums=sums, nonfinite=int(s[3].item()))
        pos += 4


def _floating_tensors(output: Any) -> list[torch.Tensor]:
    """The floating-point tensors in a module output (a tensor, or a tuple/list/dict holding tensors)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _floating_tensors(item)]
    if isinstance(output, Mapping):
        return [t for item in output.values() for t in _floating_tensors(item)]
    return []


def _fused_kernels() -> _Kernels | None:
    """The fused CPU kernels per dtype (built on first use), or None when diagnostics.native is unavailable."""
    found = {dtype: native.reducers(dtype) for dtype in (torch.float32, torch.float64)}
    kernels = {dtype: fns for dtype, fns in found.items() if fns is not None}
    return kernels or None


def _scalar(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise MonitorError(f"step() metrics must be scalars; got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().float().cpu())
    return float(value)


def _grads_already_unscaled(scaler: Any) -> bool:
    """Whether ``scaler.unscale_(optimizer)`` already ran in this iteration (PyTorch tracks it per optimizer)."""
    states = getattr(scaler, "_per_optimizer_states", None)
    if not states:
        return False
    try:
        from torch.amp.grad_scaler import OptState
    except ImportError:  # pragma: no cover - very old torch, excluded by requirements
        return False
    return any(s.get("stage") is OptState.UNSCALED for s in states.values())


class GradientMonitor:
    """Record gradient flow through a model: a context manager that owns every hook it adds.

    Example::

        store = dx.RunStore("runs")
        with dx.GradientMonitor(model, store=store, run_name="my-run", optimizer=opt) as mon:
            for x, y in loader:
                loss = loss_fn(model(x), y)
                loss.backward()
                mon.step(loss=loss, accuracy=acc)   # after backward, before optimizer.step()
                opt.step(); opt.zero_grad()
        frame = mon.frame()

    Args:
        model: Any ``nn.Module``. Every leaf module (one without children) that runs is a layer.
        store: Where to write the run (``None`` keeps it in memory only).
        run_name: Human name of the run (default: the model's class name).
        every: Record every ``every``-th step only (step 0, every, 2*every, ...).
        optimizer: Needed for ``update_ratio`` (‖ΔW‖/‖W‖ of the optimizer step after a recorded backward).
        scaler: A ``torch.amp.GradScaler``; gradients are then reported unscaled.
        layers: Qualified layer names or ``fnmatch`` patterns to record (default all leaf modules).
        layer_types: Module classes to record (default all).
        histogram_every: Every this many steps (on recorded steps) also store log10|g| histograms of weight
            and activation gradients per layer; 0 disables them.
        on_nonfinite: ``"warn"`` (default), ``"raise"`` (:class:`NonFiniteGradientError` from ``step()``,
            after the step was stored) or ``"ignore"``.
        kernels: Conv layers whose full ∂L/∂W, W and ΔW are snapshotted: a list of names, ``"auto"`` (the
            first, middle and last conv layer in forward order) or ``None``.
        kernel_every: Snapshot every this many steps (on recorded steps).
        kernel_max_mb: Size budget of all snapshots of the run. When the next snapshot would exceed it, every
            other stored snapshot is deleted and ``kernel_every`` doubles, so the snapshots keep covering the
            whole run within the budget (the rate in force is kept in the run's metadata).
        meta: Extra JSON-serialisable metadata for the run (config, group id, ...).
        flush_every: Write the store every this many recorded steps (and at least every 2 s).
        activations: Also record activation and activation-gradient statistics (the forward hooks). With
            ``False`` only weight statistics are taken (the layer order is still tracked).
        weight_norms: Also record ‖W‖ of every parameter (``weight_norm``). It costs one more read of all
            the weights per recorded step, about a third of the weight-only cost; with ``False`` the
            ``weight_norm`` column is NaN. An ``optimizer`` needs ‖W‖ for ``update_ratio``, so it keeps them on.
        distributed: Under DistributedDataParallel, ``True`` (the default process group) or a process group:
            activation statistics of all ranks are combined once per step, outside the hooks, so that they
            equal one process on the global batch (weight gradients are read after DDP's all-reduce anyway).
            Every rank constructs and steps its monitor the same way; only rank 0 should pass a ``store``.
            Histograms are refused (one rank's histogram is not the global batch's).
        fused: Reduce contiguous float32/float64 CPU tensors with the fused one-pass kernels of
            :mod:`diagnostics.native` (built with the system C compiler on first use; PyTorch reductions where
            they are unavailable). ``False`` uses PyTorch reductions only. Same statistics either way; on
            resnet18 the fused kernels take the all-statistics overhead from about 1.34x to 1.10-1.17x.
    """

    def __init__(self, model: nn.Module, store: RunStore | None = None, run_name: str | None = None, *,
                 every: int = 1, optimizer: torch.optim.Optimizer | None = None, scaler: Any = None,
                 layers: Sequence[str] | None = None,
                 layer_types: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
                 histogram_every: int = 0, on_nonfinite: str = "warn",
                 kernels: Sequence[str] | str | None = None, kernel_every: int = 50,
                 kernel_max_mb: float = 256.0, meta: Mapping[str, Any] | None = None,
                 flush_every: int = 10, activations: bool = True, weight_norms: bool = True,
                 distributed: bool | Any = False, fused: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise MonitorError(f"GradientMonitor needs an nn.Module, got {type(model).__name__}")
        if every < 1:
            raise MonitorError(f"every must be a positive number of steps, got {every}")
        if distributed is not False and histogram_every:
            raise MonitorError("histograms are not supported with distributed=... (one rank's output-gradient "
                               "histogram is not the global batch's); use histogram_every=0")
        if on_nonfinite not in ("warn", "raise", "ignore"):
            raise MonitorError(f"on_nonfinite must be 'warn', 'raise' or 'ignore', got {on_nonfinite!r}")
        self.model = model
        self.store = store
        self.run_name = run_name or type(model).__name__
        self.every = int(every)
        self.optimizer = optimizer
        self.scaler = scaler
        self.histogram_every = int(histogram_every)
        self.on_nonfinite = on_nonfinite
        self.kernel_every = max(1, int(kernel_every))
        self.kernel_max_bytes = int(kernel_max_mb * 2**20)
        self._kernels_wanted = kernels
        self._extra_meta = dict(meta or {})
        self._flush_every = flush_every
        self.activations = bool(activations)
        self.weight_norms = bool(weight_norms) or optimizer is not None
        self.distributed = distributed is not False
        self.fused = bool(fused)
        self._group = None if distributed is True or distributed is False else distributed
        self.run_id: str | None = None

        self._layer_names: dict[nn.Module, str] = {}
        for name, module in model.named_modules():
            if next(module.children(), None) is not None:
                continue
            qualified = name or type(module).__name__
            if layers is not None and not any(fnmatch.fnmatchcase(qualified, p) for p in layers):
                continue
            if layer_types is not None and not isinstance(module, layer_types):
                continue
            self._layer_names[module] = qualified
        self._layer_types = {n: type(m).__name__ for m, n in self._layer_names.items()}
        # Every parameter that can get a gradient, with the layer and attribute that own it.
        self._params: list[tuple[str, nn.Parameter, str, str]] = []
        owners = {m: n for n, m in model.named_modules()}
        seen: set[int] = set()
        for mod_name, module in model.named_modules():
            for attr, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                qualified = f"{mod_name}.{attr}" if mod_name else attr
                layer = self._layer_names.get(module, owners.get(module, "") or type(module).__name__)
                self._params.append((qualified, p, layer, attr))

        #: layer -> {"weight": qualified parameter name, "bias": ...} for the layer's own parameters.
        self._own: dict[str, dict[str, str]] = defaultdict(dict)
        for qualified, _, layer, attr in self._params:
            if attr in ("weight", "bias"):
                self._own[layer].setdefault(attr, qualified)
        self._param_by_name = {q: p for q, p, _, _ in self._params}
        self._handles: list[Any] = []
        self._scratch = _Scratch()
        self._segments: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}
        self._enabled = False
        self._step = 0
        self._recording = True
        self._fused: _Kernels | None = None           # set on attach, when diagnostics.native can be used
        self._arena_rows = max(256, 4 * len(self._layer_names))
        self._buffer = _StepBuffer()
        self._depth: dict[str, int] = {}
        self._writer: RunWriter | None = None
        self._memory: dict[str, ColumnBuffer] = {t: ColumnBuffer() for t in ("layers", "steps", "params", "hist")}
        self._open: dict[str, Any] | None = None          # the last recorded step, awaiting its update
        self._weight_copies: dict[str, torch.Tensor] = {}   # W before the optimizer step, then ΔW
        self._copied: set[str] = set()
        self._kernel_layers: list[str] | None = None
        self._kernel_bytes = 0
        self._kernel_sizes: list[tuple[int, int]] = []
        self._kernel_stopped = False
        self._warned_nonfinite = False
        self._t0 = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------------
    def __enter__(self) -> GradientMonitor:
        self.attach()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.detach(status="finished" if exc_type is None else "crashed",
                    error=None if exc is None else f"{type(exc).__name__}: {exc}")

    def attach(self) -> None:
        """Add the hooks and open the run. Raises :class:`MonitorError` if a monitor is already attached."""
        if self._enabled or self._handles:
            raise MonitorError("this GradientMonitor is already attached; use one `with` block per monitor")
        for module in self.model.modules():
            if module in _ATTACHED:
                raise MonitorError(
                    f"{type(self.model).__name__} (or one of its submodules) already has a GradientMonitor "
                    "attached; leave the first monitor's `with` block before attaching another")
        try:
            for module, name in self._layer_names.items():
                self._handles.append(module.register_forward_hook(self._make_forward_hook(name)))
            if self.optimizer is not None:
                self._handles.append(self.optimizer.register_step_pre_hook(self._before_optimizer_step))
                self._handles.append(self.optimizer.register_step_post_hook(self._after_optimizer_step))
        except BaseException:
            self._remove_hooks()
            raise
        _ATTACHED.update(self.model.modules())
        self._fused = _fused_kernels() if self.fused else None
        self._buffer = self._new_buffer()
        self._enabled = True
        self._t0 = time.perf_counter()
        if self.store is not None:
            n_params = sum(p.numel() for p in self.model.parameters())
            meta = {
                "model": type(self.model).__name__,
                "parameters": int(n_params),
                "layers": len(self._layer_names),
                "every": self.every,
                "activations": self.activations,
                "weight_norms": self.weight_norms,
                "reductions": "fused" if self._fused else "pytorch",
                "histogram_every": self.histogram_every,
                "hist_edges": stats.HIST_EDGES.tolist(),
                "torch": torch.__version__,
                "device": str(next(self.model.parameters()).device) if n_params else "cpu",
                **self._extra_meta,
            }
            self._writer = self.store.create_run(self.run_name, meta, flush_every=self._flush_every)
            self.run_id = self._writer.run_id
        else:
            from ..store import new_run_id

            self.run_id = new_run_id(self.run_name)

    def detach(self, status: str = "finished", error: str | None = None) -> None:
        """Remove every hook (idempotent), store the last step and close the run."""
        self._enabled = False
        self._remove_hooks()
        for module in self.model.modules():
            _ATTACHED.discard(module)
        try:
            self._commit_open()
        finally:
            self._weight_copies = {}
            self._scratch = _Scratch()
            if self._writer is not None:
                if error:
                    self._writer.meta["error"] = error
                self._writer.close(status=status)

    def _remove_hooks(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    def _new_buffer(self) -> _StepBuffer:
        return _StepBuffer.create(self._fused, self._arena_rows)

    # -- hooks ---------------------------------------------------------------------------------------------
    def _make_forward_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not (self._enabled and self._recording) or not torch.is_grad_enabled():
                return
            tensors = _floating_tensors(output)
            if not tensors:
                return
            if name not in self._depth:
                self._depth[name] = len(self._depth)
            buf = self._buffer
            if not self.activations:
                buf.ran.add(name)
                return
            for out in tensors:
                buf.forward_seq += 1
                call = buf.fused(out, buf.forward_seq, 0) \
                    or self._reduce_activation(out.detach(), buf.forward_seq, self._scratch)
                if out.requires_grad:
                    committed = module.training
                    if committed:
                        buf.acts[name].append(call)
                    out.register_hook(self._make_grad_hook(name, None if committed else call))
                elif module.training:
                    buf.acts[name].append(call)
        return hook

    def _make_grad_hook(self, name: str, pending: _Call | None) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            if not (self._enabled and self._recording):
                return
            buf = self._buffer
            buf.backward_seq += 1
            call = buf.fused(grad, buf.backward_seq, 1)
            if call is None:
                g = grad.detach()
                sums = stats.gradient_sums(g, self._scratch.like(g))
                call = _Call(g.numel(), sums, stats.nonfinite_count(g, sums), buf.backward_seq)
            buf.grads[name].append(call)
            if pending is not None:
                buf.acts[name].append(pending)
            if self._histogram_step(self._step):
                h = stats.log10_histogram(grad.detach())
                prev = buf.act_grad_hist.get(name)
                buf.act_grad_hist[name] = h if prev is None else prev + h
        return hook

    @staticmethod
    def _reduce_activation(x: torch.Tensor, seq: int, scratch: _Scratch) -> _Call:
        sums = stats.activation_sums(x, scratch.like(x))
        nonfinite = stats.nonfinite_count(x, sums)
        if isinstance(nonfinite, int) and nonfinite:
            # NaN poisons the sign-based count of non-zeros: count exactly on this rare path.
            sums = sums.clone()
            sums[2] = x.numel() - stats.zero_count_exact(x)
        return _Call(x.numel(), sums, nonfinite, seq)

    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not (self._enabled and self._open is not None and self._open.get("awaiting_update")):
            return
        with torch.no_grad():
            # Copy into buffers kept between steps: no fresh allocation (and page faults) per step.
            for name in self._open["param_index"]:
                p = self._param_by_name[name].detach()
                old = self._weight_copies.get(name)
                if old is None or old.shape != p.shape or old.device != p.device or old.dtype != p.dtype:
                    self._weight_copies[name] = old = torch.empty_like(p)
                old.copy_(p)
            self._copied = set(self._open["param_index"])

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not (self._enabled and self._open is not None and self._copied):
            return
        with torch.no_grad():
            kernel_layers = self._open["kernel_arrays"] if self._open.get("kernel_step") else {}
            kernel_updates = {}
            updates: dict[str, torch.Tensor | float] = {}
            snapshots = {self._own.get(layer, {}).get("weight") for layer in kernel_layers}   # need ΔW itself
            fused: dict[torch.dtype, list[tuple[str, torch.Tensor, torch.Tensor]]] = defaultdict(list)
            for name in self._copied:
                p, old = self._param_by_name[name].detach(), self._weight_copies[name]
                if self._fused is not None and name not in snapshots and native.eligible_pair(p, old):
                    fused[p.dtype].append((name, p, old))     # ‖ΔW‖² in one read of both, ΔW never written
                    continue
                delta = torch.sub(p, old, out=old)              # ΔW in place
                updates[name] = stats.squared_norm(delta)
            for items in fused.values():
                squares = native.diff_sums([p for _, p, _ in items], [old for _, _, old in items]).tolist()
                updates.update(zip([name for name, _, _ in items], squares))
            for layer in kernel_layers:
                name = self._own.get(layer, {}).get("weight")
                if name in self._copied:
                    kernel_updates[layer] = self._weight_copies[name].float().cpu().numpy().copy()
            self._open["updates"] = updates
            self._open["kernel_updates"] = kernel_updates
        self._copied = set()
        self._open["awaiting_update"] = False

    def _segment_ids(self, sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
        key = (sizes, device)
        ids = self._segments.get(key)
        if ids is None:
            if len(self._segments) > 8:                   # the parameters with gradients changed shape again
                self._segments.clear()
            ids = self._segments[key] = stats.segment_ids(sizes, device)
        return ids

    def _param_of(self, layer: str, attr: str) -> torch.Tensor:
        return self._param_by_name[self._own[layer][attr]]

    def _histogram_step(self, step: int) -> bool:
        return self.histogram_every > 0 and step % self.histogram_every == 0

    # -- the step ------------------------------------------------------------------------------------------
    def step(self, loss: Any = None, **metrics: Any) -> None:
        """Close the current step: read weight gradients, reduce, store. Call after backward, before the
        optimizer step. Any keyword becomes a per-step metric column (scalars or 1-element tensors).
        """
        if not self._enabled:
            raise MonitorError("step() was called outside the monitor's `with` block (or after detach())")
        self._commit_open()
        step = self._step
        buf = self._buffer
        if buf.arena is not None and buf.used >= len(buf.arena):    # it overflowed: give the next step twice
            self._arena_rows = 2 * len(buf.arena)
        self._buffer = self._new_buffer()
        self._step += 1
        recorded = self._recording
        self._recording = self._step % self.every == 0
        if not recorded:
            return
        self._record(step, buf, loss, metrics)

    def _record(self, step: int, buf: _StepBuffer, loss: Any, metrics: Mapping[str, Any]) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size(self._group) > 1:
                _all_reduce_step(buf, self._group)
        transfer = _Transfer()
        scale = 1.0
        weight_scale = 1.0
        if self.scaler is not None and getattr(self.scaler, "is_enabled", lambda: True)():
            scale = float(self.scaler.get_scale())
            weight_scale = 1.0 if _grads_already_unscaled(self.scaler) else scale
        histogram = self._histogram_step(step)

        # Layer activations and output gradients (already reduced in the hooks).
        def queue(c: _Call) -> tuple[_Call, int, int]:
            if c.nonfinite is None:                           # a host row of the fused kernels: 4 numbers
                offset = transfer.add(c.sums)
                return c, offset, offset + 3
            return c, transfer.add(c.sums), transfer.add(c.nonfinite)

        act_off = {n: [queue(c) for c in calls] for n, calls in buf.acts.items()}
        grad_off = {n: [queue(c) for c in calls] for n, calls in buf.grads.items()}
        hist_off = {n: transfer.add(h) for n, h in buf.act_grad_hist.items()}

        # Parameter gradients, read from p.grad after backward (and after unscale_/accumulation).
        param_off: dict[str, tuple[int, int, int, int]] = {}
        weight_hist_off: dict[str, int] = {}
        # Non-finite elements are counted after the transfer, only where the sums show some.
        with torch.no_grad():
            small: dict[torch.device, list[tuple[str, torch.Tensor, torch.Tensor]]] = defaultdict(list)
            fused: dict[torch.dtype, list[tuple[str, torch.Tensor, torch.Tensor]]] = defaultdict(list)
            use_fused = self._fused is not None
            for name, p, layer, attr in self._params:
                g = p.grad
                if g is None:                                     # frozen: only the weight norm of a layer
                    if self.weight_norms and attr == "weight" and layer in self._depth:
                        param_off[name] = (-1, -1, transfer.add(stats.squared_norm(p.detach())), p.numel())
                    continue
                if histogram and attr == "weight":
                    weight_hist_off[layer] = transfer.add(stats.log10_histogram(g))
                if use_fused and native.eligible_pair(g, p):
                    fused[g.dtype].append((name, g, p.detach()))   # all CPU parameters in one pass, below
                    continue
                if 0 < g.numel() <= stats.BATCH_NUMEL and g.dtype in (torch.float32, torch.float64):
                    small[g.device].append((name, g, p.detach()))  # reduced below, all at once
                    continue
                w_off = transfer.add(stats.squared_norm(p.detach())) if self.weight_norms else -1
                sums = stats.gradient_sums(g, self._scratch.like(g))
                param_off[name] = (transfer.add(sums), -1, w_off, p.numel())
            for items in fused.values():
                sums = native.param_sums([g for _, g, _ in items],
                                         [w if self.weight_norms else None for _, _, w in items])  # (k, 4)
                off = transfer.add(sums)
                for i, (name, g, _) in enumerate(items):
                    param_off[name] = (off + 4 * i, -1, off + 4 * i + 3 if self.weight_norms else -1, g.numel())
            for device, items in small.items():
                ids = self._segment_ids(tuple(g.numel() for _, g, _ in items), device)
                g_off = transfer.add(stats.gradient_sums_batched([g for _, g, _ in items], ids))  # (k, 3)
                w_off = transfer.add(stats.squared_norms_batched([w for _, _, w in items], ids)) \
                    if self.weight_norms else -1
                for i, (name, g, _) in enumerate(items):
                    param_off[name] = (g_off + 3 * i, -1, w_off + i if w_off >= 0 else -1, g.numel())
        loss_off = transfer.add(loss.detach().float().reshape(1)) if isinstance(loss, torch.Tensor) else None
        metric_off = {k: transfer.add(v.detach().float().reshape(1)) for k, v in metrics.items()
                      if isinstance(v, torch.Tensor) and v.numel() == 1}

        host = transfer.fetch()                                   # the one host transfer of this step

        # ---- host side: pool calls, build rows ---------------------------------------------------------
        def pooled_acts(name: str) -> dict[str, float]:
            calls = act_off.get(name, [])
            n = sum(c.numel for c, _, _ in calls)
            total = sum(host[o] for _, o, _ in calls)
            sumsq = sum(host[o + 1] for _, o, _ in calls)
            nonzero = sum(host[o + 2] for _, o, _ in calls)
            nonfinite = int(sum(host[o] for _, _, o in calls))
            return {"act_mean": stats.mean(total, n), "act_std": stats.std(total, sumsq, n),
                    "act_zero_frac": stats.fraction(n - nonzero, n) if calls else math.nan,
                    "act_nonfinite": nonfinite}

        def pooled_grads(name: str) -> dict[str, float]:
            calls = grad_off.get(name, [])
            if not calls:
                return {"act_grad_norm": math.nan, "act_grad_mean_abs": math.nan,
                        "act_grad_max_abs": math.nan, "act_grad_nonfinite": 0}
            n = sum(c.numel for c, _, _ in calls)
            sum_abs = sum(host[o] for _, o, _ in calls) / scale
            sumsq = sum(host[o + 1] for _, o, _ in calls) / (scale * scale)
            max_abs = max(host[o + 2] for _, o, _ in calls) / scale
            return {"act_grad_norm": stats.l2_norm(sumsq), "act_grad_mean_abs": stats.mean(sum_abs, n),
                    "act_grad_max_abs": max_abs, "act_grad_nonfinite": int(sum(host[o] for _, _, o in calls))}

        params_rows: dict[str, list[Any]] = defaultdict(list)
        per_param: dict[str, dict[str, float]] = {}
        total_sumsq = 0.0
        any_grad = False
        for name, p, layer, attr in self._params:
            if name not in param_off:
                continue
            g_off, nf_off, w_off, numel = param_off[name]
            weight_norm = stats.l2_norm(host[w_off]) if w_off >= 0 else math.nan
            if g_off < 0:
                per_param[name] = {"norm": weight_norm}
                continue
            any_grad = True
            sum_abs, sumsq, max_abs = host[g_off] / weight_scale, host[g_off + 1] / weight_scale**2, \
                host[g_off + 2] / weight_scale
            total_sumsq += sumsq
            nonfinite = 0 if math.isfinite(sumsq) else int((~torch.isfinite(p.grad)).sum())
            row = {"grad_norm": stats.l2_norm(sumsq), "grad_mean_abs": stats.mean(sum_abs, numel),
                   "grad_max_abs": max_abs, "norm": weight_norm, "nonfinite": nonfinite}
            per_param[name] = row
            for key, value in (("step", step), ("param", name), ("layer", layer), ("shape", "x".join(map(str, p.shape))),
                               ("numel", numel), *row.items()):
                params_rows[key].append(value)

        layer_rows: dict[str, list[Any]] = defaultdict(list)
        ran = set(act_off) | set(grad_off)
        if not self.activations:                         # every layer that ran, with NaN activation columns
            ran |= buf.ran
        names = sorted(ran, key=lambda n: self._depth.get(n, 1 << 30))
        first_forward = min(((c.seq, n) for n, calls in act_off.items() for c, _, o in calls if host[o] > 0),
                            default=(None, None))[1]
        first_backward = min(((c.seq, n) for n, calls in grad_off.items() for c, _, o in calls if host[o] > 0),
                             default=(None, None))[1]
        for name in names:
            own = self._own.get(name, {})
            w = per_param.get(own.get("weight", ""), {})
            b = per_param.get(own.get("bias", ""), {})
            acts, grads = pooled_acts(name), pooled_grads(name)
            wnf = int(w.get("nonfinite", 0)) + int(b.get("nonfinite", 0))
            row = {
                "step": step, "layer": name, "type": self._layer_types.get(name, ""),
                "depth": self._depth.get(name, -1),
                "calls": max(len(act_off.get(name, [])), len(grad_off.get(name, []))),
                "weight_grad_norm": w.get("grad_norm", math.nan),
                "weight_grad_mean_abs": w.get("grad_mean_abs", math.nan),
                "weight_grad_max_abs": w.get("grad_max_abs", math.nan),
                "bias_grad_norm": b.get("grad_norm", math.nan),
                "weight_norm": w.get("norm", math.nan), "update_ratio": math.nan,
                **grads, **acts,
                "weight_grad_nonfinite": wnf,
            }
            row["nonfinite"] = row["act_nonfinite"] + row["act_grad_nonfinite"] + wnf
            for key, value in row.items():
                layer_rows[key].append(value)
        if first_backward is None:
            first_backward = next((n for n, bad in zip(names, layer_rows["weight_grad_nonfinite"]) if bad), None)

        step_row: dict[str, Any] = {
            "step": step, "time": time.time(),
            "loss": host[loss_off] if loss_off is not None else (_scalar(loss) if loss is not None else math.nan),
            "grad_norm_total": stats.l2_norm(total_sumsq) if any_grad else math.nan,
            "grad_scale": scale,
            "nonfinite_forward_layer": first_forward or "",
            "nonfinite_backward_layer": first_backward or "",
        }
        for key, value in metrics.items():
            step_row[key] = host[metric_off[key]] if key in metric_off else _scalar(value)

        hist_rows: dict[str, list[Any]] = defaultdict(list)
        for kind, offsets in (("act_grad", hist_off), ("weight_grad", weight_hist_off)):
            n_bins = len(stats.HIST_EDGES) - 1
            div = scale if kind == "act_grad" else weight_scale
            for name, off in offsets.items():
                counts = host[off:off + n_bins + 2]
                hist_rows["step"].append(step)
                hist_rows["layer"].append(name)
                hist_rows["kind"].append(kind)
                # Dividing g by the loss scale shifts log10|g| by log10(scale): bins move as a whole only
                # when the shift is a whole number of bins, so unscaled histograms are stored with the
                # scale noted rather than re-binned.
                hist_rows["counts"].append(counts[:n_bins].astype(np.int64).tolist())
                hist_rows["zeros"].append(int(counts[n_bins]))
                hist_rows["nonfinite"].append(int(counts[n_bins + 1]))
                hist_rows["log10_scale"].append(math.log10(div) if div > 0 else 0.0)

        kernel_step = False
        kernel_arrays: dict[str, dict[str, np.ndarray]] = {}
        if self._kernels_wanted is not None and step % self.kernel_every == 0 and not self._kernel_stopped:
            kernel_arrays = self._snapshot_kernels(step, weight_scale)
            kernel_step = bool(kernel_arrays)

        self._open = {
            "step": step, "layers": layer_rows, "steps": step_row, "params": params_rows, "hist": hist_rows,
            "param_index": {n for n in per_param if "grad_norm" in per_param[n]},
            "per_param": per_param,
            "awaiting_update": self.optimizer is not None,
            "kernel_step": kernel_step, "kernel_arrays": kernel_arrays,
        }
        if self.optimizer is None:
            self._commit_open()
        self._report_nonfinite(step, first_forward, first_backward)

    def _snapshot_kernels(self, step: int, weight_scale: float) -> dict[str, dict[str, np.ndarray]]:
        if self._kernel_layers is None:
            convs = [n for n in sorted(self._depth, key=self._depth.get)
                     if self._has_kernel(n)]
            if self._kernels_wanted == "auto":
                picked = [convs[0], convs[len(convs) // 2], convs[-1]] if convs else []
                self._kernel_layers = list(dict.fromkeys(picked))
            else:
                wanted = list(self._kernels_wanted or [])
                unknown = [n for n in wanted if not self._has_kernel(n)]
                if unknown:
                    warnings.warn(f"kernel snapshots: {unknown} are not conv layers with a weight gradient "
                                  f"in this model; conv layers are {convs}", RuntimeWarning, stacklevel=4)
                self._kernel_layers = [n for n in wanted if n not in unknown]
            if self._writer is not None:
                self._writer.meta["kernel_layers"] = self._kernel_layers
        arrays: dict[str, dict[str, np.ndarray]] = {}
        size = 0
        for layer in self._kernel_layers:
            p = self._param_of(layer, "weight")
            if p.grad is None:
                continue
            grad = (p.grad.detach().float() / weight_scale).cpu().numpy()
            weight = p.detach().float().cpu().numpy().copy()     # never a view of the live weights
            arrays[layer] = {"grad": grad, "weight": weight}
            size += grad.nbytes * (3 if self.optimizer is not None else 2)
        if size > self.kernel_max_bytes:
            self._kernel_stopped = True
            msg = (f"kernel snapshots off: one snapshot of {self._kernel_layers} takes {size / 2**20:.1f} MB, "
                   f"over the {self.kernel_max_bytes / 2**20:.0f} MB budget (raise kernel_max_mb or choose "
                   "smaller layers with kernels=[...])")
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
            if self._writer is not None:
                self._writer.meta["kernel_snapshots_stopped"] = msg
            return {}
        while self._kernel_bytes + size > self.kernel_max_bytes and self._kernel_sizes:
            # Over budget: keep every other snapshot and halve the rate, so the run stays covered end to end.
            dropped = self._kernel_sizes[1::2]
            self._kernel_sizes = self._kernel_sizes[0::2]
            self._kernel_bytes = sum(s for _, s in self._kernel_sizes)
            self.kernel_every *= 2
            if self._writer is not None:
                self._writer.delete_kernels([s for s, _ in dropped])
                self._writer.meta["kernel_every"] = self.kernel_every
            if step % self.kernel_every != 0:
                return {}
        self._kernel_bytes += size
        self._kernel_sizes.append((step, size))
        return arrays

    def _has_kernel(self, layer: str) -> bool:
        try:
            p = self._param_of(layer, "weight")
        except KeyError:
            return False
        return p.dim() >= 3 and p.requires_grad

    def _commit_open(self) -> None:
        """Store the last recorded step (with its update ratio once the optimizer step is known)."""
        open_step, self._open = self._open, None
        self._copied = set()
        if open_step is None:
            return
        updates = open_step.get("updates", {})
        if updates:
            transfer = _Transfer()
            offsets = {k: transfer.add(v) for k, v in updates.items()}
            host = transfer.fetch()
            per_param = open_step["per_param"]
            ratios = {k: stats.ratio(stats.l2_norm(host[o]), per_param[k]["norm"]) for k, o in offsets.items()}
            open_step["params"]["update_ratio"] = [ratios.get(n, math.nan) for n in open_step["params"]["param"]]
            layer_update = []
            for layer in open_step["layers"]["layer"]:
                name = self._own.get(layer, {}).get("weight")
                layer_update.append(ratios.get(name, math.nan) if name else math.nan)
            open_step["layers"]["update_ratio"] = layer_update
        elif open_step["params"]:
            open_step["params"]["update_ratio"] = [math.nan] * len(open_step["params"]["param"])
        self._emit(open_step)

    def _emit(self, open_step: dict[str, Any]) -> None:
        run = self.run_id or ""
        tables: dict[str, dict[str, list[Any]]] = {}
        for key in ("layers", "params", "hist"):
            cols = open_step[key]
            if cols and len(next(iter(cols.values()))):
                tables[key] = {"run": [run] * len(next(iter(cols.values()))), **cols}
        tables["steps"] = {"run": [run], **{k: [v] for k, v in open_step["steps"].items()}}
        if self._writer is not None:
            for key, columns in tables.items():
                self._writer.append(key, columns)
            if open_step.get("kernel_step"):
                arrays = {f"{layer}|{kind}": arr for layer, kinds in open_step["kernel_arrays"].items()
                          for kind, arr in kinds.items()}
                for layer, upd in open_step.get("kernel_updates", {}).items():
                    arrays[f"{layer}|update"] = upd
                self._writer.write_kernels(open_step["step"], arrays)
            self._writer.meta["layers"] = len(self._depth)
            self._writer.end_step()
        else:
            for key, columns in tables.items():
                self._memory[key].extend(columns)

    def _report_nonfinite(self, step: int, forward: str | None, backward: str | None) -> None:
        if forward is None and backward is None:
            return
        where = []
        if forward is not None:
            where.append(f"in the forward pass first at layer {forward!r}")
        if backward is not None:
            where.append(f"in the backward pass first at layer {backward!r}")
        message = f"non-finite values (NaN/Inf) at step {step}: " + " and ".join(where)
        if self._writer is not None and "first_nonfinite" not in self._writer.meta:
            self._writer.meta["first_nonfinite"] = {"step": step, "forward": forward, "backward": backward}
        if self.on_nonfinite == "raise":
            self._commit_open()
            if self._writer is not None:
                self._writer.flush()
            phase, layer = ("forward", forward) if forward is not None else ("backward", backward)
            raise NonFiniteGradientError(message + ". Lower the learning rate, check the inputs, or clip "
                                         "gradients.", step=step, layer=str(layer), phase=phase)
        if self.on_nonfinite == "warn" and not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(message + " (further occurrences are recorded without warning)", RuntimeWarning,
                          stacklevel=3)

    # -- results -------------------------------------------------------------------------------------------
    @property
    def steps_seen(self) -> int:
        """How many times :meth:`step` was called."""
        return self._step

    def _collect(self, table: str) -> pd.DataFrame:
        if self.store is not None and self._writer is not None:
            self._writer.flush()
            reader = {"layers": lambda: self.store.frame(self.run_id, join_steps=False),
                      "steps": lambda: self.store.step_frame(self.run_id),
                      "params": lambda: self.store.param_frame(self.run_id),
                      "hist": lambda: self.store.histogram_frame(self.run_id)}[table]
            return reader()
        buffer = self._memory[table]
        if not len(buffer):
            return pd.DataFrame()
        return buffer.to_table().to_pandas()

    def frame(self) -> pd.DataFrame:
        """One row per (step, layer) with the per-step columns (loss, metrics, total norm) joined in."""
        self._commit_if_finished()
        layers = self._collect("layers")
        steps = self._collect("steps")
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
        """One row per (step, parameter) for every parameter that had a gradient."""
        self._commit_if_finished()
        return self._collect("params")

    def histogram_frame(self) -> pd.DataFrame:
        """The recorded log10|g| histograms (see :data:`diagnostics.stats.HIST_EDGES`)."""
        self._commit_if_finished()
        return self._collect("hist")

    def _commit_if_finished(self) -> None:
        # A step still waiting for its optimizer update is included with update_ratio NaN only once the
        # monitor is closed; while attached it is committed as soon as the next step() or exit comes.
        if not self._enabled:
            self._commit_open()
