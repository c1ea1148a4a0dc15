"""Rows of the run's tables as typed records, built on the host from one step's transferred sums.

A layer row pools every committed call of a layer (sums added, maxima maxed) and takes its parameter columns
over the row's own parameters as one vector: ``weight_*`` over those whose name does not start with ``bias``,
``bias_grad_norm`` over the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from . import stats
from .buffers import Call


@dataclass
class LayerRecord:
    """One row of the per-(step, layer) table; columns as in :data:`stats.LAYER_COLUMNS`."""

    step: int
    layer: str
    type: str
    kind: str                          # "leaf" (a leaf module that ran) or "owner" (owns parameters)
    depth: int
    calls: int
    weight_grad_norm: float
    weight_grad_mean_abs: float
    weight_grad_max_abs: float
    bias_grad_norm: float
    weight_norm: float
    update_ratio: float
    act_grad_norm: float
    act_grad_mean_abs: float
    act_grad_max_abs: float
    act_mean: float
    act_std: float
    act_zero_frac: float
    units: int                         # units along the output's unit axis (0: per-unit activity not recorded)
    dead_units: float                  # fraction of them not active over the last unit_window recordings
    nonfinite: int
    act_nonfinite: int
    act_grad_nonfinite: int
    weight_grad_nonfinite: int
    shared_with: str                   # first owner of a parameter this module shares ("" when none)
    in_optimizer: bool | None          # some own parameter is in the optimizer (None: no optimizer given)


@dataclass
class ParamRecord:
    """One row of the per-(step, parameter) table; columns as in :data:`stats.PARAM_COLUMNS`."""

    step: int
    param: str
    layer: str
    shape: str
    numel: int
    grad_norm: float
    grad_mean_abs: float
    grad_max_abs: float
    norm: float
    update_ratio: float
    nonfinite: int
    in_optimizer: bool | None


@dataclass
class GradSums:
    """Host sums of one gradient (or of several, pooled): Σ|g|, Σg², max|g|, element and NaN/Inf counts."""

    sum_abs: float = 0.0
    sumsq: float = 0.0
    max_abs: float = -math.inf
    numel: int = 0
    nonfinite: int = 0
    count: int = 0                     # how many tensors were pooled

    def add(self, other: GradSums) -> None:
        self.sum_abs += other.sum_abs
        self.sumsq += other.sumsq
        self.max_abs = max(self.max_abs, other.max_abs) if not math.isnan(other.max_abs) else math.nan
        self.numel += other.numel
        self.nonfinite += other.nonfinite
        self.count += other.count

    def norm(self) -> float:
        return stats.l2_norm(self.sumsq) if self.count else math.nan

    def mean_abs(self) -> float:
        return stats.mean(self.sum_abs, self.numel) if self.count else math.nan

    def max(self) -> float:
        return self.max_abs if self.count else math.nan


def count(value: float) -> int:
    """A transferred count as an int (0 where there were no values to count, e.g. meta tensors)."""
    return int(value) if math.isfinite(value) else 0


#: (act_mean, act_std, act_zero_frac, act_nonfinite) of a layer without activation calls.
NO_ACTIVATIONS = (math.nan, math.nan, math.nan, 0)
#: (act_grad_norm, act_grad_mean_abs, act_grad_max_abs, act_grad_nonfinite) of a layer without output gradients.
NO_OUTPUT_GRADS = (math.nan, math.nan, math.nan, 0)


def _call_sums(calls: Sequence[tuple[Call, int, int]], host: Sequence[float],
               third: Callable[[Iterable[float]], float]) -> tuple[int, float, float, float, float]:
    """(numel, first, second, third, NaN/Inf count) of a layer's calls: the first two sums and the count added over
    the calls, the third combined by ``third`` (sum or max); one call is read as it is."""
    if len(calls) == 1:                               # the common case, without the generator sums
        c, o, nf = calls[0]
        return c.numel, host[o], host[o + 1], host[o + 2], host[nf]
    return (sum(c.numel for c, _, _ in calls), sum(host[o] for _, o, _ in calls),
            sum(host[o + 1] for _, o, _ in calls), third(host[o + 2] for _, o, _ in calls),
            sum(host[nf] for _, _, nf in calls))


def pool_activations(calls: Sequence[tuple[Call, int, int]], host: Sequence[float]) -> tuple[float, float, float, int]:
    """(act_mean, act_std, act_zero_frac, act_nonfinite) of all calls of a layer (offsets of [Σx, Σx², #nonzero]
    and of the NaN count)."""
    if not calls:
        return NO_ACTIVATIONS
    n, total, sumsq, nonzero, bad = _call_sums(calls, host, sum)
    return stats.mean(total, n), stats.std(total, sumsq, n), stats.fraction(n - nonzero, n), count(bad)


def pool_output_grads(calls: Sequence[tuple[Call, int, int]], host: Sequence[float],
                      scale: float) -> tuple[float, float, float, int]:
    """(act_grad_norm, act_grad_mean_abs, act_grad_max_abs, act_grad_nonfinite) of all output gradients of a
    layer, unscaled by ``scale``."""
    if not calls:
        return NO_OUTPUT_GRADS
    n, sum_abs, sumsq, max_abs, bad = _call_sums(calls, host, max)
    return (stats.l2_norm(sumsq / (scale * scale)), stats.mean(sum_abs / scale, n), max_abs / scale, count(bad))


def pooled(items: Iterable[GradSums]) -> GradSums:
    """The sums of several gradients taken as one vector."""
    total = GradSums()
    for item in items:
        total.add(item)
    return total


#: The sums of no gradient (read only).
NO_GRAD = GradSums()


def pooled_names(sums: Mapping[str, GradSums], names: Sequence[str]) -> GradSums:
    """:func:`pooled` of the named gradients that have sums (the one itself when there is one: read only)."""
    if len(names) == 1:
        return sums.get(names[0], NO_GRAD)
    return pooled(sums[n] for n in names if n in sums)


def summed_histograms(offsets: Sequence[int], host: np.ndarray, n_bins: int) -> np.ndarray:
    """The element-wise sum of histograms (bins, zeros, non-finite) at ``offsets``."""
    return np.sum([host[o:o + n_bins + 2] for o in offsets], axis=0)


_FIELDS: dict[type, tuple[str, ...]] = {}


class Columns:
    """Records of one type collected as rows and read as columns (``data``: {name: values}), ready for the store.

    Rows are added as records (:meth:`append`) or as value tuples in field order (:meth:`add`, the hot path);
    ``data`` is built once, on first read, and may then be edited (update ratios are filled in later).
    """

    def __init__(self, record_type: type) -> None:
        names = _FIELDS.get(record_type)
        if names is None:
            names = _FIELDS[record_type] = tuple(f.name for f in fields(record_type))
        self.names = names
        self._rows: list[tuple[Any, ...]] = []
        self._data: dict[str, list[Any]] | None = None

    def append(self, record: Any) -> None:
        values = record.__dict__
        self.add(*(values[name] for name in self.names))

    def add(self, *values: Any) -> None:
        """One row, its values in the record type's field order."""
        if self._data is not None:
            raise RuntimeError("rows added after the columns were read")
        self._rows.append(values)

    @property
    def data(self) -> dict[str, list[Any]]:
        if self._data is None:
            self._data = {n: list(col) for n, col in zip(self.names, zip(*self._rows))} if self._rows else {}
        return self._data

    def __len__(self) -> int:
        return len(self._rows)


@dataclass
class BlockRecord:
    """One row of the per-(step, block) table of backward gains; columns as in :data:`stats.BLOCK_COLUMNS`."""

    step: int
    block: str
    type: str
    depth: int
    calls: int
    residual: bool
    in_grad_norm: float                # ‖∂L/∂x‖ (NaN when the block's input needed no gradient)
    out_grad_norm: float               # ‖∂L/∂y‖
    gain: float                        # ‖∂L/∂x‖ / ‖∂L/∂y‖
    branch_share: float                # ‖∂L/∂x − g_skip‖ / ‖∂L/∂x‖ (residual blocks only)


def queue_blocks(transfer: Any, state: Any) -> dict[str, list[tuple[int, int, int]]]:
    """Queue every block call's squared norms; offsets (in, out, branch) per call, -1 where absent."""
    def add(value: Any) -> int:
        return -1 if value is None else transfer.add(value)
    return {name: [(add(c.in_sq), add(c.out_sq), add(c.branch_sq)) for c in calls]
            for name, calls in state.calls.items()}


def block_records(step: int, offsets: dict[str, list[tuple[int, int, int]]], host: np.ndarray, hooks: Any,
                  depth: dict[str, int], scale: float) -> Columns:
    """Pool each block's calls (sums of squares added) into one row; norms unscaled by ``scale``."""
    out = Columns(BlockRecord)
    types = hooks.types()
    for name in sorted(offsets, key=lambda n: depth.get(n, 1 << 30)):
        calls = offsets[name]
        ins = [host[i] for i, _, _ in calls if i >= 0]
        outs = [host[o] for _, o, _ in calls if o >= 0]
        branches = [host[b] for _, _, b in calls if b >= 0]
        in_norm = stats.l2_norm(sum(ins)) / scale if ins else math.nan
        out_norm = stats.l2_norm(sum(outs)) / scale if outs else math.nan
        share = math.nan
        if hooks.residual[name] and branches and len(branches) == len(ins):
            share = stats.ratio(stats.l2_norm(sum(branches)) / scale, in_norm)
        out.append(BlockRecord(step=step, block=name, type=types[name], depth=depth.get(name, -1),
                               calls=len(calls), residual=hooks.residual[name], in_grad_norm=in_norm,
                               out_grad_norm=out_norm, gain=stats.ratio(in_norm, out_norm), branch_share=share))
    return out
