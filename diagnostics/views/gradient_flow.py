"""The Gradient flow page's view: chosen runs and options in, every figure and finding out (no Streamlit).

A view reads through a *loader* (anything with the methods of :class:`StoreLoader`), so the dashboard can put
its cache in front of the store and the benchmark can time cold and warm loads with the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import figures, gains
from .gains import gain_profiles
from .diagnosis import Finding, Thresholds, diagnose
from .diagnosis.evidence import from_source
from .report import html_report
from .matrices import (Bucketed, HistogramMatrix, StatMatrix, bucket_rows, depth_profile, first_last_ratio,
                       histogram_quantiles, histogram_rows, layers_with_values, load_histograms, load_stat_matrix,
                       matrix_rows)
from ..store import RunStore


class Loader(Protocol):
    """What a view needs from the store."""

    def stat_matrix(self, run: str, stat: str) -> StatMatrix: ...
    def step_frame(self, run: str) -> pd.DataFrame: ...
    def histograms(self, run: str, layer: str, kind: str) -> HistogramMatrix: ...
    def block_frame(self, run: str) -> pd.DataFrame: ...


class StoreLoader:
    """Reads straight from a :class:`RunStore` (no cache)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def stat_matrix(self, run: str, stat: str) -> StatMatrix:
        return load_stat_matrix(self.store, run, stat)

    def step_frame(self, run: str) -> pd.DataFrame:
        return self.store.step_frame(run)      # every column: the findings read the input and loss flags too

    def histograms(self, run: str, layer: str, kind: str) -> HistogramMatrix:
        return load_histograms(self.store, run, layer, kind)

    def block_frame(self, run: str) -> pd.DataFrame:
        return self.store.block_frame(run)


class CachedLoader(StoreLoader):
    """A :class:`StoreLoader` with an in-process LRU cache (for scripts and benchmarks)."""

    def __init__(self, store: RunStore, size: int = 64) -> None:
        super().__init__(store)
        self.stat_matrix = lru_cache(size)(super().stat_matrix)         # type: ignore[method-assign]
        self.step_frame = lru_cache(size)(super().step_frame)           # type: ignore[method-assign]
        self.histograms = lru_cache(size)(super().histograms)           # type: ignore[method-assign]
        self.block_frame = lru_cache(size)(super().block_frame)         # type: ignore[method-assign]


@dataclass
class FlowOptions:
    """The choices of the Gradient flow page."""

    runs: list[str]
    stat: str = "weight_grad_norm"
    log: bool = True
    step: int | None = None                  # None: the last recorded step
    extra_steps: list[int] = field(default_factory=list)
    heat_run: str | None = None              # run of the heatmaps and trends (default: the first)
    trend_layers: list[str] | None = None    # default: first, middle and last layer
    hist_layer: str | None = None
    hist_kind: str = "weight_grad"
    max_points: int = 300
    thresholds: Thresholds = field(default_factory=Thresholds)


@dataclass
class FlowView:
    """Everything the Gradient flow page draws."""

    figures: dict[str, go.Figure]
    findings: dict[str, list[Finding]]
    layers: list[str]
    steps: np.ndarray
    matrices: dict[str, StatMatrix]          # the shown statistic of every selected run
    block_note: str | None = None            # runs recorded without block gains (figures gain, cumulative)
    finding_errors: dict[str, Exception] = field(default_factory=dict)   # runs whose findings failed: shown

    def runs_in_order(self) -> list[str]:
        """The runs whose findings were asked for, in the order chosen (those that failed included)."""
        return list(dict.fromkeys([*self.matrices, *self.findings, *self.finding_errors]))

    def data(self) -> pd.DataFrame:
        """The shown statistic of every selected run as long rows (built on demand: it can be millions)."""
        frames = [_long(m) for m in self.matrices.values()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def gradient_flow_view(loader: Loader, options: FlowOptions, colors: dict[str, str],
                       names: dict[str, str]) -> FlowView:
    """Build every figure and finding of the Gradient flow page for the chosen runs and statistic.

    The path of a number: the loader reads one statistic of a run as a (layer × step) :class:`StatMatrix`;
    this function reduces it (a depth profile at the chosen step, bucketed rows, the first/last ratio) and hands
    the reduced data to a figure of :mod:`.figures`, which only draws.
    """
    runs, points = options.runs, options.max_points
    matrices = {run: loader.stat_matrix(run, options.stat) for run in runs}
    steps = np.unique(np.concatenate([m.steps for m in matrices.values()])) if matrices else np.zeros(0, int)
    step = int(steps[-1]) if options.step is None and len(steps) else int(options.step or 0)
    profiles = [depth_profile(m, s) for m in matrices.values() for s in [step, *options.extra_steps]]
    heat_run = options.heat_run if options.heat_run in matrices else (runs[0] if runs else None)
    figs: dict[str, go.Figure] = {"depth": figures.depth_figure(profiles, options.stat, options.log, colors, names)}
    layers: list[str] = []
    if heat_run is not None:
        name = names.get(heat_run, heat_run)
        heat = matrices[heat_run]
        layers = list(heat.layers)
        present = layers_with_values(heat) or layers
        for key, stat in (("heat_weight", "weight_grad_norm"), ("heat_act", "act_grad_norm")):
            figs[key] = figures.heatmap_figure(matrix_rows(loader.stat_matrix(heat_run, stat), None, points),
                                                   name)
        chosen = options.trend_layers if options.trend_layers else default_trend_layers(present)
        figs["trends"] = figures.trends_figure(matrix_rows(heat, chosen, points), options.log, name)
    figs["ratio"] = figures.ratio_figure([ratio_rows(loader.stat_matrix(r, options.stat), points) for r in runs],
                                             colors, names)
    step_frames = {run: loader.step_frame(run) for run in runs}
    figs["loss_norm"] = figures.loss_and_norm_figure(
        {run: step_rows(run, frame, ("loss", "grad_norm_total"), points) for run, frame in step_frames.items()},
        colors, names)
    hist_layer = options.hist_layer or (layers[0] if layers else None)
    if hist_layer is not None:
        hists = [loader.histograms(run, hist_layer, options.hist_kind) for run in runs]
        figs["histogram"] = figures.histogram_figure([histogram_rows(h, points) for h in hists], names,
                                                         hist_layer, options.hist_kind)
        figs["quantiles"] = figures.quantile_figure([histogram_quantiles(h) for h in hists if not h.empty],
                                                        colors, names)
    blocks = {run: loader.block_frame(run) for run in runs}
    profiles = gain_profiles(blocks, [step, *options.extra_steps])
    if profiles:                                       # runs without a blocks table get a note, not empty charts
        figs["gain"] = gains.gain_figure(profiles, colors, names)
        figs["cumulative"] = gains.cumulative_figure(profiles, colors, names)
    block_note = gains.missing_note([run for run, frame in blocks.items() if frame.empty], names)
    findings, failed = {}, {}
    for run in runs:
        try:
            findings[run] = diagnose(from_source(loader, run, repr(names.get(run, run))), options.thresholds)
        except Exception as exc:  # noqa: BLE001 - kept and shown in that run's box: one run never blanks the others
            failed[run] = exc
    return FlowView(figs, findings, layers, steps, matrices, block_note, failed)


def ratio_rows(matrix: StatMatrix, max_points: int, types: Sequence[str] | None = None) -> Bucketed:
    """The first/last-layer ratio of one run as a one-row series for :func:`.figures.ratio_figure` (empty if none)."""
    first, last, ratio = first_last_ratio(matrix, types)
    if not first:
        return bucket_rows(matrix.run, "ratio", [], np.zeros((0, 0)), np.zeros(0, dtype=np.int64), max_points)
    return bucket_rows(matrix.run, "ratio", [f"{first} / {last}"], ratio[None, :], matrix.steps, max_points)


def step_rows(run: str, frame: pd.DataFrame, columns: Sequence[str], max_points: int) -> Bucketed:
    """Per-step quantities of one run (the columns of its step table that it has), bucketed for drawing."""
    present = [c for c in columns if c in frame.columns] if not frame.empty else []
    steps = frame["step"].to_numpy() if present else np.zeros(0, dtype=np.int64)
    values = np.stack([frame[c].to_numpy(dtype=float) for c in present]) if present else np.zeros((0, 0))
    return bucket_rows(run, "steps", present, values, steps, max_points)


def flow_report(view: FlowView, store: RunStore, runs: list[str], names: dict[str, str], stat: str) -> str:
    """The self-contained HTML report of the page as shown: the first run's summary, every finding, every figure."""
    run = runs[0]
    meta = store.meta(run)
    summary = {"run": run, "name": meta.get("name"), "model": meta.get("model"), "steps": meta.get("steps"),
               "layers": meta.get("layers"), "status": meta.get("status"), "statistic": stat,
               "runs compared": ", ".join(names.get(r, r) for r in runs)}
    findings = [f for r in runs for f in view.findings.get(r, [])]
    return html_report(f"Gradient flow — {meta.get('name')}", summary, findings, list(view.figures.values()))


def default_trend_layers(layers: list[str]) -> list[str]:
    """The first, middle and last of the given layers (execution order)."""
    return list(dict.fromkeys([layers[0], layers[len(layers) // 2], layers[-1]])) if layers else []


def _long(matrix: StatMatrix) -> pd.DataFrame:
    """A (layer × step) matrix back as long rows: run, step, layer, depth, statistic."""
    if matrix.empty:
        return pd.DataFrame(columns=["run", "step", "layer", "depth", matrix.stat])
    n_layers, n_steps = matrix.values.shape
    return pd.DataFrame({
        "run": matrix.run, "step": np.tile(matrix.steps, n_layers),
        "layer": np.repeat(np.asarray(matrix.layers, dtype=object), n_steps),
        "depth": np.repeat(np.arange(n_layers), n_steps), matrix.stat: matrix.values.reshape(-1)})
