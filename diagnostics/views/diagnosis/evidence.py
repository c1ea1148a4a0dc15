"""What the rules read: a run's per-layer statistics as (layer × step) matrices and its step table.

Every matrix is aligned to one layer order (forward execution) and one step axis, so a rule indexes
``values(stat)[i, j]`` for layer ``layers[i]`` at step ``steps[j]``; a statistic the run did not record is all
NaN and :meth:`Evidence.has` says so. Evidence comes from a run in a store, from a monitor, or from anything with
the loader methods of the views (``stat_matrix``, ``step_frame``), so the dashboard reuses its cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ..matrices import StatMatrix, stat_matrix_from_frame

#: The per-layer statistics the rules read.
STATS: tuple[str, ...] = ("weight_grad_norm", "act_grad_norm", "update_ratio", "in_optimizer", "act_zero_frac",
                          "dead_units", "units", "weight_norm")

#: Layer types that normalise their input: their weights are scales, judged by no depth or update rule.
NORM_TYPES: frozenset[str] = frozenset({
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "LocalResponseNorm",
})


class MatrixSource(Protocol):
    """What evidence is read from (the views' loaders have these methods)."""

    def stat_matrix(self, run: str, stat: str) -> StatMatrix: ...
    def step_frame(self, run: str) -> pd.DataFrame: ...


@dataclass(frozen=True)
class Evidence:
    """One run's statistics, aligned.

    Attributes:
        run: The run's id.
        name: How messages name the run.
        layers: Layer names in forward order.
        types: Module class name of each layer.
        steps: Recorded steps, increasing, shape (S,).
        matrices: Statistic -> values of shape (L, S) (NaN where absent); only recorded statistics.
        step_table: One row per recorded step (``step``, ``loss``, ``grad_norm_total``, non-finite columns).
    """

    run: str
    name: str
    layers: tuple[str, ...]
    types: tuple[str, ...]
    steps: np.ndarray
    matrices: Mapping[str, np.ndarray] = field(default_factory=dict)
    step_table: pd.DataFrame = field(default_factory=pd.DataFrame)

    def has(self, stat: str) -> bool:
        """Whether the statistic was recorded (some finite value)."""
        values = self.matrices.get(stat)
        return values is not None and bool(np.isfinite(values).any())

    def values(self, stat: str) -> np.ndarray:
        """The (L, S) float matrix of a statistic, all NaN when it was not recorded."""
        values = self.matrices.get(stat)
        return values if values is not None else np.full((len(self.layers), len(self.steps)), np.nan)

    def column(self, name: str) -> np.ndarray:
        """A step-table column aligned to :attr:`steps` (float; NaN where absent)."""
        if self.step_table.empty or name not in self.step_table:
            return np.full(len(self.steps), np.nan)
        table = self.step_table.drop_duplicates("step", keep="last").set_index("step")[name]
        return pd.to_numeric(table.reindex(self.steps), errors="coerce").to_numpy(dtype=float)

    def text_column(self, name: str) -> np.ndarray:
        """A text column of the step table aligned to :attr:`steps` ("" where absent)."""
        if self.step_table.empty or name not in self.step_table:
            return np.full(len(self.steps), "", dtype=object)
        table = self.step_table.drop_duplicates("step", keep="last").set_index("step")[name]
        return table.reindex(self.steps).fillna("").astype(str).to_numpy(dtype=object)

    def until(self, last_step: int | None) -> Evidence:
        """The evidence of the steps up to and including ``last_step`` (all of it for None)."""
        if last_step is None:
            return self
        return self.keep(self.steps <= last_step)

    def keep(self, mask: np.ndarray) -> Evidence:
        """The evidence of the steps where ``mask`` (shape (S,)) is true."""
        kept = self.steps[mask]
        table = self.step_table[self.step_table["step"].isin(kept)] if "step" in self.step_table else self.step_table
        return Evidence(self.run, self.name, self.layers, self.types, kept,
                        {k: v[:, mask] for k, v in self.matrices.items()}, table)

    def before(self, step: int | None) -> Evidence:
        """The evidence of the steps before ``step`` (all of it for None)."""
        return self if step is None else self.until(step - 1)


def from_matrices(run: str, name: str, matrices: Mapping[str, StatMatrix], steps: pd.DataFrame) -> Evidence:
    """Align stat matrices (the same run, maybe different layer sets) to one layer order and step axis."""
    present = [m for m in matrices.values() if not m.empty]
    if not present:
        return Evidence(run, name, (), (), np.zeros(0, dtype=np.int64), {}, steps)
    base = max(present, key=lambda m: len(m.layers))
    all_steps = np.unique(np.concatenate([m.steps for m in present]))
    row = {layer: i for i, layer in enumerate(base.layers)}
    aligned = {}
    for stat, m in matrices.items():
        if m.empty:
            continue
        out = np.full((len(base.layers), len(all_steps)), np.nan)
        rows = np.array([row.get(layer, -1) for layer in m.layers], dtype=np.int64)
        cols = np.searchsorted(all_steps, m.steps)
        ok = rows >= 0
        out[np.ix_(rows[ok], cols)] = np.asarray(m.values, dtype=float)[ok]
        aligned[stat] = out
    return Evidence(run, name, tuple(base.layers), tuple(str(t) for t in base.types), all_steps, aligned, steps)


def from_source(source: MatrixSource, run: str, name: str | None = None) -> Evidence:
    """Evidence of one run through a loader (``stat_matrix``, ``step_frame``)."""
    return from_matrices(run, name or run, {s: source.stat_matrix(run, s) for s in STATS}, source.step_frame(run))


def from_frames(run: str, name: str, layers: pd.DataFrame, steps: pd.DataFrame) -> Evidence:
    """Evidence from in-memory frames: ``layers`` one row per (step, layer), ``steps`` one row per step.

    Without ``step`` or ``layer`` there is no evidence; a missing ``depth`` is the order layers first appear in,
    a missing ``type`` is unknown ("").
    """
    if layers.empty or not {"step", "layer"} <= set(layers.columns):
        layers = pd.DataFrame(columns=["step", "layer", "depth", "type"])
    if "depth" not in layers:
        layers = layers.assign(depth=layers.groupby("layer", sort=False).ngroup())
    if "type" not in layers:
        layers = layers.assign(type="")
    matrices = {s: stat_matrix_from_frame(_numeric(layers, s), run, s) for s in STATS}
    return from_matrices(run, name, matrices, steps)


def _numeric(frame: pd.DataFrame, stat: str) -> pd.DataFrame:
    """``frame`` with ``stat`` as float (booleans and None become 1/0/NaN), unchanged when it lacks the column."""
    if frame.empty or stat not in frame.columns:
        return frame
    out = frame.copy()
    out[stat] = pd.to_numeric(out[stat].astype(object).where(out[stat].notna(), np.nan).map(_as_float),
                              errors="coerce")
    return out


def _as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def bad_steps(ev: Evidence) -> np.ndarray:
    """Per step: a non-finite input, loss, layer or total gradient norm (bool, shape (S,)).

    A loss or norm column that is NaN on every step was not recorded (no ``loss=`` given), not non-finite.
    """
    bad = np.zeros(len(ev.steps), dtype=bool)
    for name in ("grad_norm_total", "loss"):
        values = ev.column(name)
        if np.isfinite(values).any() or np.isinf(values).any():
            bad |= ~np.isfinite(values)
    for flag in ("input_nonfinite", "loss_nonfinite"):
        bad |= np.nan_to_num(ev.column(flag), nan=0.0) > 0
    for name in ("nonfinite_forward_layer", "nonfinite_backward_layer"):
        bad |= ev.text_column(name) != ""
    return bad


#: A gradient scaler skipping at most this share of the steps (and the run finite at its end) is working.
SCALER_SKIPS = 0.05


def skipped_by_scaler(ev: Evidence, bad: np.ndarray) -> bool:
    """Whether the bad steps are the rare overflows a mixed-precision gradient scaler skips by design."""
    scale = ev.column("grad_scale")
    scaled = bool(np.isfinite(scale).any() and np.nanmax(np.abs(scale)) != 1.0)
    return scaled and bad.any() and not bad[-1] and bad.sum() <= max(1, SCALER_SKIPS * len(bad))


def first_bad_index(ev: Evidence) -> int | None:
    """Index (into ``ev.steps``) of the first non-finite step, None when there is none or a scaler skipped them."""
    bad = bad_steps(ev)
    hits = np.flatnonzero(bad)
    return None if not len(hits) or skipped_by_scaler(ev, bad) else int(hits[0])


def finite_part(ev: Evidence) -> Evidence:
    """The steps before the first non-finite one (after it every statistic is a consequence); without the
    skipped steps when a gradient scaler skipped them."""
    bad = bad_steps(ev)
    if bad.any() and skipped_by_scaler(ev, bad):
        return ev.keep(~bad)
    index = first_bad_index(ev)
    return ev if index is None else ev.before(int(ev.steps[index]))


def median(values: np.ndarray) -> float:
    """Median of the finite values (NaN when there are none; no warning)."""
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")
