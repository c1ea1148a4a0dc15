"""Whole views of the dashboard as data → figures, independent of Streamlit (the pages call these).

A view reads through a *loader* (anything with the methods of :class:`StoreLoader`), so the dashboard can put
its cache in front of the store and the benchmark can time cold and warm loads with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import figures as plots
from .diagnosis import Finding, Thresholds, find_problems
from .matrices import (HistogramMatrix, StatMatrix, depth_profile, histogram_quantiles, layers_with_values,
                   load_histograms, load_stat_matrix)
from ..store import RunStore


class Loader(Protocol):
    """What a view needs from the store."""

    def stat_matrix(self, run: str, stat: str) -> StatMatrix: ...
    def step_frame(self, run: str) -> pd.DataFrame: ...
    def histograms(self, run: str, layer: str, kind: str) -> HistogramMatrix: ...


class StoreLoader:
    """Reads straight from a :class:`RunStore` (no cache)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def stat_matrix(self, run: str, stat: str) -> StatMatrix:
        return load_stat_matrix(self.store, run, stat)

    def step_frame(self, run: str) -> pd.DataFrame:
        return self.store.step_frame(run, columns=["step", "loss", "grad_norm_total", "nonfinite_forward_layer",
                                                   "nonfinite_backward_layer"])

    def histograms(self, run: str, layer: str, kind: str) -> HistogramMatrix:
        return load_histograms(self.store, run, layer, kind)


class CachedLoader(StoreLoader):
    """A :class:`StoreLoader` with an in-process LRU cache (for scripts and benchmarks)."""

    def __init__(self, store: RunStore, size: int = 64) -> None:
        super().__init__(store)
        self.stat_matrix = lru_cache(size)(super().stat_matrix)         # type: ignore[method-assign]
        self.step_frame = lru_cache(size)(super().step_frame)           # type: ignore[method-assign]
        self.histograms = lru_cache(size)(super().histograms)           # type: ignore[method-assign]


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

    def data(self) -> pd.DataFrame:
        """The shown statistic of every selected run as long rows (built on demand: it can be millions)."""
        frames = [_long(m) for m in self.matrices.values()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def gradient_flow_view(loader: Loader, options: FlowOptions, colors: dict[str, str],
                       names: dict[str, str]) -> FlowView:
    """Build every figure and finding of the Gradient flow page for the chosen runs and statistic."""
    runs = options.runs
    matrices = {run: loader.stat_matrix(run, options.stat) for run in runs}
    steps = np.unique(np.concatenate([m.steps for m in matrices.values()])) if matrices else np.zeros(0, int)
    step = int(steps[-1]) if options.step is None and len(steps) else int(options.step or 0)
    profiles = [depth_profile(m, s) for m in matrices.values() for s in [step, *options.extra_steps]]
    heat_run = options.heat_run if options.heat_run in matrices else (runs[0] if runs else None)
    figures: dict[str, go.Figure] = {"depth": plots.depth_figure(profiles, options.stat, options.log, colors, names)}
    layers: list[str] = []
    if heat_run is not None:
        name = names.get(heat_run, heat_run)
        heat = matrices[heat_run]
        layers = list(heat.layers)
        present = layers_with_values(heat) or layers
        figures["heat_weight"] = plots.heatmap_figure(loader.stat_matrix(heat_run, "weight_grad_norm"),
                                                      options.max_points, name)
        figures["heat_act"] = plots.heatmap_figure(loader.stat_matrix(heat_run, "act_grad_norm"),
                                                   options.max_points, name)
        chosen = options.trend_layers if options.trend_layers else default_trend_layers(present)
        figures["trends"] = plots.trends_figure(heat, chosen, options.log, options.max_points, name)
    figures["ratio"] = plots.ratio_figure([loader.stat_matrix(r, options.stat) for r in runs], colors, names,
                                          options.max_points)
    step_frames = {run: loader.step_frame(run) for run in runs}
    figures["loss_norm"] = plots.loss_and_norm_figure(step_frames, colors, names, options.max_points)
    hist_layer = options.hist_layer or (layers[0] if layers else None)
    if hist_layer is not None:
        hists = [loader.histograms(run, hist_layer, options.hist_kind) for run in runs]
        figures["histogram"] = plots.histogram_figure(hists, names, options.max_points)
        figures["quantiles"] = plots.quantile_figure([histogram_quantiles(h) for h in hists if not h.empty],
                                                     colors, names)
    findings = {run: find_problems(loader.stat_matrix(run, "weight_grad_norm"),
                                   loader.stat_matrix(run, "act_zero_frac"),
                                   loader.stat_matrix(run, "update_ratio"), step_frames[run], options.thresholds,
                                   name=names.get(run, run))
                for run in runs}
    return FlowView(figures, findings, layers, steps, matrices)


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
