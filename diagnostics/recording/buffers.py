"""What one step gathers between two ``step()`` calls: forward passes, their calls, output gradients.

Every hooked tensor is reduced at once to a few sums (:class:`Call`), kept on its device (or in the fused
kernels' host arena) until the step's single host transfer (:class:`Transfer`).

Forward calls are grouped into **passes**: one call of the model, or calls made outside it. A pass counts only
if backward reached it (one of its output-gradient hooks fired), so a forward in training mode that is never
backpropagated (an evaluation without ``no_grad``) is not pooled into the step; a pass that no gradient can
reach (a frozen model) counts when it ran in training mode. Calls under ``torch.no_grad()`` wait aside and
count only when a reentrant ``torch.utils.checkpoint`` recomputes them inside backward.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np
import torch


@dataclass
class Call:
    """The reductions of one tensor from one call of a layer (device tensors until the step's transfer)."""

    numel: int
    #: (3,) device tensor (see stats.activation_sums / stats.gradient_sums); or, from the fused CPU kernels,
    #: a (4,) float64 host row whose last value is the NaN/Inf count (``nonfinite`` is then None); None when
    #: the sums are in row ``row`` of the step's arena.
    sums: torch.Tensor | np.ndarray | None
    nonfinite: torch.Tensor | int | None
    seq: int                           # order of the call within the step's forward or backward pass
    units: torch.Tensor | None = None  # (units,) bool: which units were active (``unit_activity=True``)
    row: int = -1                      # the fused kernels' arena row of ``sums`` (-1: not from the arena)


@dataclass
class Pass:
    """The calls of one forward pass."""

    acts: dict[str, list[Call]] = field(default_factory=lambda: defaultdict(list))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))   # module calls per leaf
    first: dict[str, int] = field(default_factory=dict)                       # first call's order per leaf
    rooted: bool = False               # started by a call of the model itself
    tracked: bool = False              # some output of it has a gradient hook
    got_grad: bool = False             # ... and one of them fired
    training: bool = False             # some call ran in training mode
    index: int = -1                    # position in the step's passes

    def add(self, name: str, seq: int) -> None:
        self.calls[name] += 1
        self.first.setdefault(name, seq)

    def counts(self) -> bool:
        """Whether this pass belongs to the step (see the module docstring)."""
        return self.got_grad if self.tracked else self.training


#: The fused reductions' extension module (see diagnostics.recording.native).
Kernels = ModuleType


_FUSED_DTYPES = (torch.float32, torch.float64)


@dataclass
class StepBuffer:
    """Everything gathered between two ``step()`` calls, still on the device (or in ``arena`` on the host)."""

    passes: list[Pass] = field(default_factory=list)
    current: Pass | None = None                        # the pass the next forward call belongs to
    grads: dict[str, list[Call]] = field(default_factory=lambda: defaultdict(list))
    act_grad_hist: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: list[torch.Tensor] = field(default_factory=list)  # NaN/Inf counts of the model's input tensors
    #: leaf -> calls made under no_grad, waiting for a reentrant checkpoint to recompute them in backward
    nograd: dict[str, list[tuple[Pass, Call | None, int]]] = field(default_factory=lambda: defaultdict(list))
    forward_seq: int = 0
    backward_seq: int = 0
    unit_axes: dict[int, tuple[int, torch.Size]] = field(default_factory=dict)  # id(output) -> (unit axis, shape)
    kernels: Kernels | None = None                     # the fused CPU kernels, when they can be used
    arena: torch.Tensor | None = None                  # (capacity, 4) float64 rows they write into
    rows: np.ndarray | None = None                     # the same memory, read on the host
    used: int = 0                                      # rows of arena taken

    @classmethod
    def create(cls, kernels: Kernels | None, capacity: int) -> StepBuffer:
        if kernels is None:
            return cls()
        arena = torch.empty((capacity, 4), dtype=torch.float64)
        return cls(kernels=kernels, arena=arena, rows=arena.numpy())

    def start_pass(self, rooted: bool) -> Pass:
        self.current = Pass(rooted=rooted, index=len(self.passes))
        self.passes.append(self.current)
        return self.current

    def pass_for_call(self) -> Pass:
        """The pass of a forward call: the model's current call, or a pass of calls made outside the model."""
        p = self.current
        if p is None or (not p.rooted and p.got_grad):      # outside the model, after a backward: a new one
            p = self.start_pass(rooted=False)
        return p

    def adopt_nograd(self, name: str) -> tuple[Pass, Call | None] | None:
        """The latest no_grad call of ``name``, now recomputed by a checkpoint inside backward; counted."""
        waiting = self.nograd.get(name)
        if not waiting:
            return None
        p, call, seq = waiting.pop()
        p.add(name, seq)
        if call is not None:
            p.acts[name].append(call)
        return p, call

    def committed(self) -> tuple[dict[str, list[Call]], dict[str, int], dict[str, int]]:
        """Activation calls, module-call counts and first-call order of the passes that count."""
        acts: dict[str, list[Call]] = defaultdict(list)
        calls: dict[str, int] = defaultdict(int)
        first: dict[str, int] = {}
        for p in self.passes:
            if not p.counts():
                continue
            for name, items in p.acts.items():
                acts[name].extend(items)
            for name, n in p.calls.items():
                calls[name] += n
            for name, seq in p.first.items():
                first[name] = min(seq, first.get(name, seq))
        return acts, calls, first

    def keep(self, rows: torch.Tensor) -> list[tuple[np.ndarray | None, int]]:
        """Copy (n, 4) float64 sums into the next arena rows (queued with the arena: one transfer): (None, arena
        row) of each; (the row itself, -1) for rows kept outside a full (or absent) arena."""
        host = rows.numpy()
        k, n = self.used, len(host)
        if self.rows is None or k + n > len(self.rows):
            if self.rows is not None:
                self.used = len(self.rows)                 # full: the next step's arena is made larger
            return [(host[i], -1) for i in range(n)]
        self.rows[k:k + n] = host
        self.used = k + n
        return [(None, i) for i in range(k, k + n)]

    def fused(self, x: torch.Tensor, seq: int, kind: int) -> Call | None:
        """Reduce a contiguous CPU tensor in one pass into the next arena row (kind 0: activation, 1: gradient).

        None where the fused path cannot take ``x`` (other device, dtype or tensor type, strided, arena full):
        the caller then uses the PyTorch reductions. Kept to a few attribute reads: it runs for every hooked
        tensor.
        """
        k = self.used
        if self.kernels is None or k >= len(self.rows) or type(x) is not torch.Tensor or not x.is_cpu \
                or x.dtype not in _FUSED_DTYPES or x.layout is not torch.strided or not x.is_contiguous() \
                or x.is_neg():
            return None
        self.used = k + 1
        (self.kernels.grad_sums if kind else self.kernels.act_sums)(x, self.arena, k)   # row k = [4 float64]
        return Call(x.numel(), None, None, seq, None, k)


class Transfer:
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
        for (device, _), indices in groups.items():
            if device.type == "meta":                      # no values to read: NaN
                for i in indices:
                    out[self._starts[i]:self._starts[i] + self._parts[i].numel()] = np.nan
                continue
            # One concatenation and one copy to the host per (device, dtype), converted once.
            joined = torch.cat([self._parts[i] for i in indices]).cpu().to(torch.float64).numpy()
            pos = 0
            for i in indices:
                n = self._parts[i].numel()
                out[self._starts[i]:self._starts[i] + n] = joined[pos:pos + n]
                pos += n
        return out


class Scratch:
    """Reusable 1-D work buffers, one per (device, dtype), grown to the largest tensor seen."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor | None:
        if x.dtype not in (torch.float32, torch.float64) or type(x) is not torch.Tensor:
            return None
        key = (x.device, x.dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < x.numel():
            buf = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
            self._buffers[key] = buf
        return buf
