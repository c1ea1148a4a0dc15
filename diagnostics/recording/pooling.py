"""One step's statistics pooled per row, for every row and parameter at once (numpy over the step's host array).

A layer row pools every committed call of its layer (sums added, maxima maxed) and takes its parameter columns
over the row's own parameters as one vector: ``weight_*`` over those whose name does not start with ``bias``,
``bias_grad_norm`` over the others. The formulas are those of :mod:`.stats` (``l2_norm``, ``mean``, ``std``,
``fraction``), written over arrays: a row without any call or gradient gets NaN, and its counts 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .buffers import Call


@dataclass
class CallArrays:
    """The committed calls of one step (activations or output gradients), one entry per call."""

    row: np.ndarray                    # (c,) int: position of the call's layer among the step's rows (-1: none)
    offset: np.ndarray                 # (c,) int: offset of its first sum in the host array
    nonfinite: np.ndarray              # (c,) int: offset of its NaN/Inf count
    numel: np.ndarray                  # (c,) float: elements reduced
    seq: np.ndarray                    # (c,) int: order within the step's forward or backward
    names: list[str]                   # (c,) its layer's name


def flatten_calls(calls: Mapping[str, Sequence[tuple[Call, int, int]]], position: Mapping[str, int]) -> CallArrays:
    """``{layer: [(call, offset, NaN/Inf offset)]}`` as arrays; ``position`` gives each row's place."""
    row, offset, nonfinite, numel, seq, names = [], [], [], [], [], []
    for name, items in calls.items():
        at = position.get(name, -1)
        for c, o, nf in items:
            row.append(at)
            offset.append(o)
            nonfinite.append(nf)
            numel.append(c.numel)
            seq.append(c.seq)
            names.append(name)
    return CallArrays(np.array(row, dtype=np.int64), np.array(offset, dtype=np.int64),
                      np.array(nonfinite, dtype=np.int64), np.array(numel, dtype=np.float64),
                      np.array(seq, dtype=np.int64), names)


def first_nonfinite(calls: CallArrays, host: np.ndarray) -> str | None:
    """The layer of the earliest call (by order) with a NaN/Inf, or None."""
    if not len(calls.seq):
        return None
    bad = host[calls.nonfinite] > 0
    if not bad.any():
        return None
    return calls.names[int(np.argmin(np.where(bad, calls.seq, np.iinfo(np.int64).max)))]


def _sums(calls: CallArrays, values: np.ndarray, rows: int) -> np.ndarray:
    """(rows,) sums of ``values`` (one per call) per row; calls of no row are left out."""
    keep = calls.row >= 0
    return np.bincount(calls.row[keep], weights=values[keep], minlength=rows)


def _maxima(row: np.ndarray, values: np.ndarray, rows: int) -> np.ndarray:
    """(rows,) maxima of ``values`` per row (-inf where none; NaN is kept: it means a NaN gradient)."""
    out = np.full(rows, -np.inf)
    with np.errstate(invalid="ignore"):
        np.maximum.at(out, row, values)
    return out


def _counts(values: np.ndarray) -> list[int]:
    """Transferred counts as ints (0 where there were no values to count, e.g. meta tensors)."""
    return np.where(np.isfinite(values), values, 0).astype(np.int64).tolist()


def activations(calls: CallArrays, host: np.ndarray, rows: int) -> tuple[list, list, list, list[int]]:
    """(act_mean, act_std, act_zero_frac, act_nonfinite) per row from [Σx, Σx², #nonzero] and the NaN count."""
    o = calls.offset
    n = _sums(calls, calls.numel, rows)
    total, sumsq = _sums(calls, host[o], rows), _sums(calls, host[o + 1], rows)
    nonzero, bad = _sums(calls, host[o + 2], rows), _sums(calls, host[calls.nonfinite], rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        some = n > 0
        mean = np.where(some, total / n, np.nan)
        var = sumsq / n - mean * mean
        std = np.where(some & np.isfinite(var), np.sqrt(np.maximum(var, 0.0)), np.nan)
        zero = np.where(some, (n - nonzero) / n, np.nan)
    return mean.tolist(), std.tolist(), zero.tolist(), _counts(bad)


def output_grads(calls: CallArrays, host: np.ndarray, rows: int, scale: float) -> tuple[list, list, list, list[int]]:
    """(act_grad_norm, act_grad_mean_abs, act_grad_max_abs, act_grad_nonfinite) per row from [Σ|g|, Σg², max|g|]
    and the NaN count, unscaled by ``scale``."""
    o = calls.offset
    keep = calls.row >= 0
    n = _sums(calls, calls.numel, rows)
    sum_abs, sumsq = _sums(calls, host[o], rows), _sums(calls, host[o + 1], rows)
    bad = _sums(calls, host[calls.nonfinite], rows)
    top = _maxima(calls.row[keep], host[o + 2][keep], rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        some = n > 0
        had = np.bincount(calls.row[keep], minlength=rows) > 0
        norm = np.where(had, np.sqrt(sumsq / (scale * scale)), np.nan)
        mean = np.where(some, (sum_abs / scale) / n, np.nan)
        top = np.where(had, top / scale, np.nan)
    return norm.tolist(), mean.tolist(), top.tolist(), _counts(bad)


@dataclass
class ParamArrays:
    """The parameters' sums of one step, in the table's parameter order (unscaled by the weight scale)."""

    has: np.ndarray                    # (p,) bool: the parameter had a gradient
    sum_abs: np.ndarray                # (p,) Σ|g|
    sumsq: np.ndarray                  # (p,) Σg²
    max_abs: np.ndarray                # (p,) max|g|
    numel: np.ndarray                  # (p,) elements of the whole parameter
    nonfinite: np.ndarray              # (p,) NaN/Inf count of the gradient
    norm: np.ndarray                   # (p,) ‖W‖ (NaN: not read)

    def grad_norm(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.sqrt(self.sumsq)

    def grad_mean_abs(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.numel > 0, self.sum_abs / self.numel, np.nan)


def parameter_arrays(grad: np.ndarray, weight: np.ndarray, numel: np.ndarray, nonfinite: np.ndarray,
                     host: np.ndarray, weight_scale: float) -> ParamArrays:
    """Read every parameter's sums from the host array: ``grad`` offsets of [Σ|g|, Σg², max|g|] and ``weight``
    offsets of Σw² (-1: none)."""
    has = grad >= 0
    g = np.where(has, grad, 0)
    pick = np.where(has[:, None], host[g[:, None] + np.arange(3)], np.nan)       # (p, 3)
    with np.errstate(invalid="ignore"):
        norm = np.where(weight >= 0, np.sqrt(host[np.where(weight >= 0, weight, 0)]), np.nan)
    return ParamArrays(has, pick[:, 0] / weight_scale, pick[:, 1] / weight_scale**2, pick[:, 2] / weight_scale,
                       numel, nonfinite, norm)


@dataclass
class Groups:
    """Which parameters each row pools: (row position, parameter index) pairs of its weight and bias groups."""

    weight_rows: np.ndarray
    weight_params: np.ndarray
    bias_rows: np.ndarray
    bias_params: np.ndarray
    weights: np.ndarray                # (rows,) int: parameters in each row's weight group


def groups(members: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Groups:
    """:class:`Groups` of rows given as (weight-group parameter indices, bias-group indices), in row order."""
    wr = [r for r, (ws, _) in enumerate(members) for _ in ws]
    wp = [i for ws, _ in members for i in ws]
    br = [r for r, (_, bs) in enumerate(members) for _ in bs]
    bp = [i for _, bs in members for i in bs]
    return Groups(np.array(wr, dtype=np.int64), np.array(wp, dtype=np.int64), np.array(br, dtype=np.int64),
                  np.array(bp, dtype=np.int64), np.array([len(ws) for ws, _ in members], dtype=np.int64))


def _pool(rows_of: np.ndarray, params_of: np.ndarray, p: ParamArrays, rows: int,
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(norm, mean |g|, max |g|, NaN/Inf count) per row of the gradients of its group taken as one vector."""
    had = p.has[params_of]
    r, i = rows_of[had], params_of[had]
    count = np.bincount(r, minlength=rows)
    n = np.bincount(r, weights=p.numel[i], minlength=rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        some = count > 0
        norm = np.where(some, np.sqrt(np.bincount(r, weights=p.sumsq[i], minlength=rows)), np.nan)
        mean = np.where(some & (n > 0), np.bincount(r, weights=p.sum_abs[i], minlength=rows) / n, np.nan)
        top = np.where(some, _maxima(r, p.max_abs[i], rows), np.nan)
    return norm, mean, top, np.bincount(r, weights=p.nonfinite[i], minlength=rows)


def parameter_columns(g: Groups, p: ParamArrays, rows: int) -> dict[str, list]:
    """The parameter columns of the layer rows: weight_grad_*, bias_grad_norm, weight_norm, weight_grad_nonfinite."""
    w_norm, w_mean, w_max, w_bad = _pool(g.weight_rows, g.weight_params, p, rows)
    b_norm, _, _, b_bad = _pool(g.bias_rows, g.bias_params, p, rows)
    squares = p.norm[g.weight_params] ** 2                      # NaN where a weight was not read: the norm is NaN
    with np.errstate(invalid="ignore"):
        weight_norm = np.where(g.weights > 0, np.sqrt(np.bincount(g.weight_rows, weights=squares, minlength=rows)),
                               np.nan)
    return {"weight_grad_norm": w_norm.tolist(), "weight_grad_mean_abs": w_mean.tolist(),
            "weight_grad_max_abs": w_max.tolist(), "bias_grad_norm": b_norm.tolist(),
            "weight_norm": weight_norm.tolist(), "weight_grad_nonfinite": (w_bad + b_bad).astype(np.int64).tolist()}
