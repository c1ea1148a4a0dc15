"""Rows of the run's tables as typed records, built on the host from one step's transferred sums.

A layer row pools every committed call of a layer (sums added, maxima maxed) and takes its parameter columns
over the row's own parameters as one vector: ``weight_*`` over those whose name does not start with ``bias``,
``bias_grad_norm`` over the others.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
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


def pool_activations(calls: Sequence[tuple[Call, int, int]], host: np.ndarray) -> dict[str, float]:
    """act_mean/std/zero_frac/nonfinite of all calls of a layer (offsets of [Σx, Σx², #nonzero] and NaN count)."""
    n = sum(c.numel for c, _, _ in calls)
    total = sum(host[o] for _, o, _ in calls)
    sumsq = sum(host[o + 1] for _, o, _ in calls)
    nonzero = sum(host[o + 2] for _, o, _ in calls)
    return {"act_mean": stats.mean(total, n), "act_std": stats.std(total, sumsq, n),
            "act_zero_frac": stats.fraction(n - nonzero, n) if calls else math.nan,
            "act_nonfinite": count(sum(host[o] for _, _, o in calls))}


def pool_output_grads(calls: Sequence[tuple[Call, int, int]], host: np.ndarray, scale: float) -> dict[str, float]:
    """act_grad_norm/mean_abs/max_abs/nonfinite of all output gradients of a layer, unscaled by ``scale``."""
    if not calls:
        return {"act_grad_norm": math.nan, "act_grad_mean_abs": math.nan,
                "act_grad_max_abs": math.nan, "act_grad_nonfinite": 0}
    n = sum(c.numel for c, _, _ in calls)
    sum_abs = sum(host[o] for _, o, _ in calls) / scale
    sumsq = sum(host[o + 1] for _, o, _ in calls) / (scale * scale)
    max_abs = max(host[o + 2] for _, o, _ in calls) / scale
    return {"act_grad_norm": stats.l2_norm(sumsq), "act_grad_mean_abs": stats.mean(sum_abs, n),
            "act_grad_max_abs": max_abs, "act_grad_nonfinite": count(sum(host[o] for _, _, o in calls))}


def pooled(items: Iterable[GradSums]) -> GradSums:
    """The sums of several gradients taken as one vector."""
    total = GradSums()
    for item in items:
        total.add(item)
    return total


def summed_histograms(offsets: Sequence[int], host: np.ndarray, n_bins: int) -> np.ndarray:
    """The element-wise sum of histograms (bins, zeros, non-finite) at ``offsets``."""
    return np.sum([host[o:o + n_bins + 2] for o in offsets], axis=0)


class Columns:
    """Records of one type collected as columns ({name: values}), ready for the store."""

    def __init__(self, record_type: type) -> None:
        self.names = [f.name for f in fields(record_type)]
        self.data: dict[str, list[Any]] = defaultdict(list)

    def append(self, record: Any) -> None:
        values = record.__dict__
        for name in self.names:
            self.data[name].append(values[name])

    def __len__(self) -> int:
        return len(self.data[self.names[0]]) if self.data else 0
