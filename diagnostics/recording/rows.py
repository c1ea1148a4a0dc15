"""Rows of the run's tables as typed records, built on the host from one step's transferred sums (the layer
and parameter rows' values come from :mod:`.pooling`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from . import stats


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
        self._length = 0                               # rows given as columns (:meth:`of`)

    @classmethod
    def of(cls, record_type: type, columns: Mapping[str, list[Any]]) -> Columns:
        """Rows given as columns: one equal-length list per field of the record type."""
        out = cls(record_type)
        if set(columns) != set(out.names):
            raise ValueError(f"columns {sorted(set(columns) ^ set(out.names))} do not match {record_type.__name__}")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of unequal lengths {sorted(lengths)}")
        out._length = lengths.pop() if lengths else 0
        out._data = {n: columns[n] for n in out.names} if out._length else {}
        return out

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
        return len(self._rows) or self._length


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
