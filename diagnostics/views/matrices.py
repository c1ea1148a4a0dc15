"""Data shaping for the gradient-flow views: one statistic of one run as a (layer × step) matrix, and the
downsampled series the charts draw from it.

Reading only what is drawn: :func:`load_stat_matrix` asks the store for four columns (``step``, ``layer``,
``depth``, the statistic), never the whole table. Long runs are bucketed along the step axis into at most
``max_points`` buckets that keep the minimum, mean and maximum of every bucket, so nothing is silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import StoreError
from ..store import RunStore

#: Statistics the gradient-flow page offers, with whether they are gradients (log scale by default).
FLOW_STATISTICS: tuple[str, ...] = (
    "weight_grad_norm", "weight_grad_mean_abs", "act_grad_norm", "act_grad_mean_abs", "update_ratio",
    "act_zero_frac", "weight_grad_max_abs", "act_grad_max_abs", "weight_norm", "act_std", "act_mean",
    "bias_grad_norm",
)


#: Cells of a (layer × step) matrix made dense at most (32 MB of float64); a run with more has its steps
#: bucketed first (the mean of each bucket, labelled by its first step), so a crafted table cannot make
#: a matrix of gigabytes (a 143 KB diagonal Parquet asked for 3.1 GB).
MAX_CELLS = 4_000_000
#: Layers of one run at most.
MAX_LAYERS = 100_000


@dataclass(frozen=True)
class StatMatrix:
    """One statistic of one run: ``values[i, j]`` is layer ``layers[i]`` at step ``steps[j]`` (NaN if absent).

    Rows are in forward-execution order (the ``depth`` column). A run with more than :data:`MAX_CELLS`
    layer-steps has bucketed steps: ``steps[j]`` is a bucket's first step and ``values`` its means.
    """

    run: str
    stat: str
    layers: tuple[str, ...]
    types: tuple[str, ...]
    steps: np.ndarray            # (S,) int64, increasing
    values: np.ndarray           # (L, S) float64
    kinds: tuple[str, ...] = ()  # "leaf" or "owner" per layer (runs recorded before schema 2: all leaves)
    bucketed: bool = False       # steps are buckets (the run has over MAX_CELLS layer-steps)

    @property
    def empty(self) -> bool:
        return self.values.size == 0


def load_stat_matrix(store: RunStore, run: str, stat: str) -> StatMatrix:
    """Read one statistic of one run (five columns only) and pivot it to a (layer × step) matrix.

    Layer names are read dictionary-encoded and pivoted by their integer codes, so a run of 2 M rows pivots
    in a fraction of a second.
    """
    table = store.arrow_table(run, "layers", ["step", "layer", "depth", "type", "kind", stat],
                              dictionary=("layer", "type"))
    return _pivot(table, run, stat)


def stat_matrix_from_frame(frame: pd.DataFrame, run: str, stat: str) -> StatMatrix:
    """Pivot an in-memory per-(step, layer) frame holding ``step``, ``layer``, ``depth``, ``type`` and ``stat``."""
    if frame.empty or stat not in frame.columns:
        return _pivot(None, run, stat)
    columns = ["step", "layer", "depth", "type", *(["kind"] if "kind" in frame.columns else []), stat]
    table = pa.Table.from_pandas(frame[columns], preserve_index=False)
    for column in ("layer", "type"):
        table = table.set_column(table.column_names.index(column), column,
                                 pc.dictionary_encode(table.column(column).cast(pa.string())))
    return _pivot(table, run, stat)


def _pivot(table: pa.Table | None, run: str, stat: str) -> StatMatrix:
    """(layer × step) matrix from rows whose ``layer`` and ``type`` columns are dictionary-encoded."""
    if table is None or stat not in table.column_names or table.num_rows == 0:
        return StatMatrix(run, stat, (), (), np.zeros(0, dtype=np.int64), np.zeros((0, 0)))
    table = table.unify_dictionaries().combine_chunks()
    layer_col, type_col = table.column("layer").chunk(0), table.column("type").chunk(0)
    codes = layer_col.indices.to_numpy(zero_copy_only=False)                       # (n,)
    names = layer_col.dictionary.to_pylist()
    depth = table.column("depth").to_numpy()                                       # (n,)
    layer_depth = np.zeros(len(names), dtype=np.int64)
    layer_depth[codes] = depth                  # a layer's depth is fixed for the whole run (its first call)
    order = np.argsort(layer_depth, kind="stable")                                 # execution order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    type_names = type_col.dictionary.to_pylist()
    type_of = np.empty(len(names), dtype=object)
    type_of[codes] = np.asarray(type_names, dtype=object)[type_col.indices.to_numpy(zero_copy_only=False)]
    step = table.column("step").to_numpy()                                         # (n,)
    steps = table_steps = np.sort(pc.unique(table.column("step")).to_numpy())      # (S,)
    if len(names) > MAX_LAYERS:
        raise StoreError(f"run {run} names {len(names):,} layers; more than {MAX_LAYERS:,} cannot be drawn")
    column = np.searchsorted(steps, step)                                           # (n,)
    raw = table.column(stat).to_numpy(zero_copy_only=False).astype(np.float64)      # (n,)
    if len(names) * len(steps) > MAX_CELLS:         # bucket the steps before anything dense is made
        buckets = step_buckets(steps, MAX_CELLS // len(names))
        column = np.searchsorted(buckets.starts, column, side="right") - 1
        steps = buckets.first_step
        values = _bucket_means(rank[codes], column, raw, (len(names), len(steps)))
    else:
        values = np.full((len(names), len(steps)), np.nan)
        values[rank[codes], column] = raw
    kind_of = np.full(len(names), "leaf", dtype=object)
    if "kind" in table.column_names:                # a parameter owner that never ran is an "owner" row
        kind_of[codes] = np.asarray(table.column("kind").to_pylist(), dtype=object)
    return StatMatrix(run, stat, tuple(names[i] for i in order), tuple(type_of[order]), steps, values,
                      tuple(kind_of[order]), bucketed=len(names) * len(table_steps) > MAX_CELLS)


def _bucket_means(rows: np.ndarray, columns: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The (L, B) matrix of the mean of the finite values falling in each cell (NaN where none is finite),
    summed without any (L, S) intermediate."""
    flat = rows * shape[1] + columns                                                # (n,)
    finite = np.isfinite(values)
    sums = np.bincount(flat[finite], weights=values[finite], minlength=shape[0] * shape[1])
    counts = np.bincount(flat[finite], minlength=shape[0] * shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan).reshape(shape)


@dataclass(frozen=True)
class Buckets:
    """A partition of the step axis: bucket ``b`` covers columns ``starts[b]`` to ``starts[b+1]-1``."""

    starts: np.ndarray           # (B,) first column of each bucket
    first_step: np.ndarray       # (B,) first step of each bucket
    last_step: np.ndarray        # (B,) last step of each bucket


def step_buckets(steps: np.ndarray, max_points: int) -> Buckets:
    """Split the recorded steps into at most ``max_points`` contiguous buckets of (nearly) equal size."""
    n = len(steps)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Buckets(empty, empty, empty)
    count = min(n, max(1, int(max_points)))
    starts = np.unique(np.linspace(0, n, count, endpoint=False).astype(np.int64))
    ends = np.append(starts[1:], n) - 1
    return Buckets(starts, steps[starts], steps[ends])


def _reduce(values: np.ndarray, buckets: Buckets, how: str) -> np.ndarray:
    """Reduce the step axis (last) of ``values`` per bucket, ignoring NaN (NaN where a bucket has none)."""
    if values.shape[-1] == 0:
        return values
    finite = np.isfinite(values)
    counts = np.add.reduceat(finite, buckets.starts, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if how == "mean":
            total = np.add.reduceat(np.where(finite, values, 0.0), buckets.starts, axis=-1)
            out = total / counts
        elif how == "min":
            out = np.minimum.reduceat(np.where(finite, values, np.inf), buckets.starts, axis=-1)
        elif how == "max":
            out = np.maximum.reduceat(np.where(finite, values, -np.inf), buckets.starts, axis=-1)
        else:
            raise ValueError(f"unknown reduction {how!r}")
    return np.where(counts > 0, out, np.nan)


def downsample(values: np.ndarray, steps: np.ndarray, max_points: int) -> tuple[Buckets, dict[str, np.ndarray]]:
    """Bucket the step axis of ``values`` (shape (..., S)) into min/mean/max series of at most ``max_points``."""
    buckets = step_buckets(steps, max_points)
    return buckets, {how: _reduce(values, buckets, how) for how in ("min", "mean", "max")}


def depth_profile(matrix: StatMatrix, step: int) -> pd.DataFrame:
    """The statistic of every layer at the recorded step nearest to ``step`` (at or before it if possible)."""
    if matrix.empty:
        return pd.DataFrame(columns=["run", "step", "layer", "type", "depth", "value"])
    j = int(np.searchsorted(matrix.steps, step, side="right")) - 1
    j = min(max(j, 0), len(matrix.steps) - 1)
    return pd.DataFrame({
        "run": matrix.run, "step": int(matrix.steps[j]), "layer": list(matrix.layers),
        "type": list(matrix.types), "depth": np.arange(len(matrix.layers)), "value": matrix.values[:, j],
    })


class FirstLastRatio(NamedTuple):
    """The statistic of the first layer divided by that of the last layer, per step of a :class:`StatMatrix`."""

    first: str                   # the first layer (execution order), "" when fewer than two layers qualify
    last: str                    # the last layer
    ratio: np.ndarray            # (S,) NaN where either value is missing, not finite, or the last one is 0


def first_last_ratio(matrix: StatMatrix, types: Sequence[str] | None = None,
                     kinds: Sequence[str] = ("leaf",)) -> FirstLastRatio:
    """Per step, the statistic of the first layer divided by that of the last layer, for every caller.

    The statistic is the matrix's (``matrix.stat``: e.g. ``weight_grad_norm`` or ``act_grad_norm``); the layers
    considered are those of the given ``types`` (e.g. ``("Conv1d", "Conv2d")``; default any layer) and row
    ``kinds`` (default the leaf modules that ran, not a parameter owner such as ViT's class token; all rows when
    fewer than two leaves qualify) that have a finite value at most steps (so ``weight_grad_norm`` skips layers
    without weights). First and last are in execution order.
    """
    if matrix.empty:
        return FirstLastRatio("", "", np.zeros(0))
    chosen = np.ones(len(matrix.layers), dtype=bool) if types is None else np.isin(matrix.types, list(types))
    present = chosen & (np.isfinite(matrix.values).mean(axis=1) > 0.5)
    if matrix.kinds and np.count_nonzero(present & np.isin(matrix.kinds, list(kinds))) >= 2:
        present &= np.isin(matrix.kinds, list(kinds))
    rows = np.flatnonzero(present)
    if len(rows) < 2:
        return FirstLastRatio("", "", np.full(len(matrix.steps), np.nan))
    first, last = matrix.values[rows[0]], matrix.values[rows[-1]]           # (S,), (S,)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = first / np.where(last > 0, last, np.nan)
    return FirstLastRatio(matrix.layers[rows[0]], matrix.layers[rows[-1]], np.where(np.isfinite(ratio), ratio, np.nan))


@dataclass(frozen=True)
class Bucketed:
    """Named rows of values over steps, bucketed for drawing (min, mean and max of each bucket of steps).

    What the figures draw: a view reduces a matrix to this, a figure only draws it.
    """

    run: str
    stat: str
    rows: tuple[str, ...]
    first_step: np.ndarray       # (B,) first step of each bucket
    last_step: np.ndarray        # (B,) last step of each bucket
    min: np.ndarray              # (R, B)
    mean: np.ndarray             # (R, B)
    max: np.ndarray              # (R, B)
    steps: int                   # recorded steps before bucketing

    @property
    def empty(self) -> bool:
        return self.mean.size == 0

    @property
    def bucketed(self) -> bool:
        """Whether buckets hold more than one step each (so a min–max band says something)."""
        return len(self.first_step) < self.steps


def bucket_rows(run: str, stat: str, rows: Sequence[str], values: np.ndarray, steps: np.ndarray,
                max_points: int) -> Bucketed:
    """Bucket ``values`` (shape (R, S), one row per name in ``rows``) along the steps into at most ``max_points``."""
    values = np.asarray(values, dtype=float).reshape(len(rows), len(steps))             # (R, S)
    buckets, series = downsample(values, np.asarray(steps), max_points)
    return Bucketed(run, stat, tuple(rows), buckets.first_step, buckets.last_step, series["min"], series["mean"],
                    series["max"], len(steps))


def matrix_rows(matrix: StatMatrix, layers: Sequence[str] | None, max_points: int) -> Bucketed:
    """The chosen layers of a matrix (default: every layer with the statistic), bucketed for drawing."""
    if layers is None:
        rows = list(np.flatnonzero(np.isfinite(matrix.values).any(axis=1))) if not matrix.empty else []
    else:
        rows = [matrix.layers.index(layer) for layer in layers if layer in matrix.layers]
    return bucket_rows(matrix.run, matrix.stat, [matrix.layers[i] for i in rows],
                       matrix.values[rows] if rows else np.zeros((0, len(matrix.steps))), matrix.steps, max_points)


@dataclass(frozen=True)
class HistogramMatrix:
    """Histogram counts of one layer over time: ``counts[b, j]`` for bin ``b`` at step ``steps[j]``."""

    run: str
    layer: str
    kind: str
    edges: np.ndarray            # (B+1,) log10 bin edges
    steps: np.ndarray            # (S,)
    counts: np.ndarray           # (B, S)
    zeros: np.ndarray            # (S,)
    nonfinite: np.ndarray        # (S,)

    @property
    def empty(self) -> bool:
        return self.counts.size == 0


def load_histograms(store: RunStore, run: str, layer: str, kind: str = "weight_grad") -> HistogramMatrix:
    """The recorded log10|g| histograms of one layer of one run, as a (bin × step) matrix."""
    edges = np.asarray(store.meta(run).get("hist_edges", []), dtype=float)
    frame = store.histogram_frame(run, layers=[layer], kind=kind)
    if frame.empty or len(edges) < 2:
        return HistogramMatrix(run, layer, kind, edges, np.zeros(0, dtype=np.int64), np.zeros((0, 0)),
                               np.zeros(0), np.zeros(0))
    frame = frame.sort_values("step")
    counts = np.asarray(frame["counts"].tolist(), dtype=float).T          # (B, S)
    if counts.shape[0] != len(edges) - 1:
        raise StoreError(f"run {run}: histogram bins do not match the run's bin edges")
    return HistogramMatrix(run, layer, kind, edges, frame["step"].to_numpy(), counts,
                           frame["zeros"].to_numpy(dtype=float), frame["nonfinite"].to_numpy(dtype=float))


def histogram_quantiles(hist: HistogramMatrix, quantiles: tuple[float, ...] = (0.05, 0.5, 0.95)) -> pd.DataFrame:
    """Quantiles of log10|g| per step from binned counts (zeros excluded), for overlaying runs on one chart."""
    rows = []
    for j, step in enumerate(hist.steps):
        c = hist.counts[:, j]
        total = c.sum()
        row = {"run": hist.run, "step": int(step), "zeros": hist.zeros[j], "nonfinite": hist.nonfinite[j]}
        cumulative = np.cumsum(c)
        for q in quantiles:
            row[f"q{int(q * 100):02d}"] = _binned_quantile(hist.edges, c, cumulative, q * total) if total else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def histogram_rows(hist: HistogramMatrix, max_points: int) -> Bucketed:
    """A run's histograms bucketed for drawing: the occupied bins (two spare on each side), zeros and NaN/Inf."""
    if hist.empty:
        return bucket_rows(hist.run, hist.kind, [], np.zeros((0, 0)), np.zeros(0, dtype=np.int64), max_points)
    centers = (hist.edges[:-1] + hist.edges[1:]) / 2                                   # (B,)
    occupied = np.flatnonzero(hist.counts.sum(axis=1) > 0)
    lo, hi = (occupied[0], occupied[-1] + 1) if len(occupied) else (0, len(centers))
    lo, hi = max(lo - 2, 0), min(hi + 2, len(centers))
    stacked = np.vstack([hist.counts[lo:hi], hist.zeros[None, :], hist.nonfinite[None, :]])   # (b + 2, S)
    rows = [f"{c:.2f}" for c in centers[lo:hi]] + ["zero", "NaN/Inf"]
    return bucket_rows(hist.run, hist.kind, rows, stacked, hist.steps, max_points)


def _binned_quantile(edges: np.ndarray, counts: np.ndarray, cumulative: np.ndarray, target: float) -> float:
    """The value below which ``target`` counts lie, interpolating linearly inside the bin that holds it."""
    b = int(min(np.searchsorted(cumulative, target), len(counts) - 1))
    before = cumulative[b - 1] if b > 0 else 0.0
    frac = (target - before) / counts[b] if counts[b] > 0 else 0.5
    return float(edges[b] + frac * (edges[b + 1] - edges[b]))


def layers_with_values(matrix: StatMatrix) -> list[str]:
    """Layers that have the statistic at some step (e.g. only layers with weights for weight statistics)."""
    if matrix.empty:
        return []
    return [matrix.layers[i] for i in np.flatnonzero(np.isfinite(matrix.values).any(axis=1))]
