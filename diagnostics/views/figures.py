"""Plotly figure builders: data in, figure out. Colour-blind-safe colours, titles and labelled axes everywhere."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .matrices import HistogramMatrix, StatMatrix, downsample, first_last_ratio, step_buckets
from ..recording.stats import STAT_LABELS

#: Okabe–Ito colours (distinguishable with the common colour-vision deficiencies), black replaced by grey so
#: that lines read on the dark theme too.
PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#999999",
                            "#F0E442")
#: Sequential colour scale for heatmaps (perceptually uniform, colour-blind-safe).
SEQUENTIAL = "Viridis"
#: Diverging colour scale for signed values (kernels), symmetric around zero.
DIVERGING = "RdBu_r"
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def run_colors(all_runs: Sequence[str]) -> dict[str, str]:
    """A colour per run, fixed by the run's position in the whole store, so it is the same on every page."""
    return {run: PALETTE[i % len(PALETTE)] for i, run in enumerate(all_runs)}


def label(stat: str) -> str:
    return STAT_LABELS.get(stat, stat)


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False},
                      annotations=[{"text": message, "showarrow": False, "font": {"size": 14}}])
    return fig


def depth_figure(profiles: Sequence[pd.DataFrame], stat: str, log: bool, colors: Mapping[str, str],
                 names: Mapping[str, str] | None = None) -> go.Figure:
    """Gradient vs depth: one line per (run, step), layers in execution order, names on hover."""
    title = f"{label(stat)} vs depth"
    profiles = [p for p in profiles if not p.empty]
    if not profiles:
        return _empty(title, "No recorded layers for this statistic.")
    fig = go.Figure()
    steps_per_run: dict[str, int] = {}
    for profile in profiles:
        run = profile["run"].iloc[0]
        k = steps_per_run.get(run, 0)
        steps_per_run[run] = k + 1
        step = int(profile["step"].iloc[0])
        profile = profile[np.isfinite(profile["value"].to_numpy(dtype=float))]    # layers without the statistic
        fig.add_trace(go.Scatter(
            x=profile["depth"], y=profile["value"], mode="lines+markers",
            name=f"{(names or {}).get(run, run)} · step {step}",
            line={"color": colors.get(run, PALETTE[0]), "dash": DASHES[k % len(DASHES)], "width": 2},
            marker={"size": 5}, customdata=np.stack([profile["layer"], profile["type"]], axis=1),
            hovertemplate="layer %{customdata[0]} (%{customdata[1]})<br>depth %{x}<br>"
                          f"{stat} %{{y:.3g}}<extra>step {step}</extra>"))
    fig.update_layout(title=title, xaxis_title="depth (layer order in the forward pass)",
                      yaxis_title=label(stat) + (" (log scale)" if log else ""), hovermode="closest",
                      legend={"orientation": "h", "y": -0.25})
    if log:
        fig.update_yaxes(type="log", exponentformat="power")
    return fig


def heatmap_figure(matrix: StatMatrix, max_columns: int = 300, name: str | None = None) -> go.Figure:
    """Layer × step heatmap; colour is log10 of the statistic (bucket mean when steps are bucketed)."""
    title = f"{label(matrix.stat)} per layer and step — {name or matrix.run}"
    if matrix.empty or not np.isfinite(matrix.values).any():
        return _empty(title, "Nothing recorded for this statistic (e.g. no layer has weights).")
    rows = np.flatnonzero(np.isfinite(matrix.values).any(axis=1))      # layers that have this statistic
    layers = [matrix.layers[i] for i in rows]
    buckets, series = downsample(matrix.values[rows], matrix.steps, max_columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log10(np.where(series["mean"] > 0, series["mean"], np.nan)).astype(np.float32)
    span = np.stack([buckets.first_step, buckets.last_step], axis=1)
    fig = go.Figure(go.Heatmap(
        z=z, x=buckets.first_step, y=layers, colorscale=SEQUENTIAL,
        colorbar={"title": {"text": "log10"}},
        customdata=np.broadcast_to(span, (len(layers), *span.shape)),
        hovertemplate="layer %{y}<br>steps %{customdata[0]}–%{customdata[1]}<br>log10 value %{z:.2f}"
                      "<extra></extra>"))
    note = "" if len(buckets.starts) == len(matrix.steps) else \
        f" (bucket means of {len(matrix.steps)} steps in {len(buckets.starts)} columns)"
    fig.update_layout(title=title, xaxis_title="training step" + note,
                      yaxis_title="layer (forward order, first at top)",
                      height=max(320, min(1400, 16 * len(layers) + 140)))
    fig.update_yaxes(autorange="reversed")
    return fig


def trends_figure(matrix: StatMatrix, layers: Sequence[str], log: bool, max_points: int = 400,
                  name: str | None = None) -> go.Figure:
    """Chosen layers over steps: bucket mean as a line, bucket min–max as a band."""
    title = f"{label(matrix.stat)} over steps — {name or matrix.run}"
    rows = [matrix.layers.index(layer) for layer in layers if layer in matrix.layers]
    if matrix.empty or not rows:
        return _empty(title, "Pick one or more layers.")
    buckets, series = downsample(matrix.values[rows], matrix.steps, max_points)
    fig = go.Figure()
    x = buckets.first_step
    for k, row in enumerate(rows):
        color = PALETTE[k % len(PALETTE)]
        layer = matrix.layers[row]
        if len(x) < len(matrix.steps):
            fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]),
                                     y=np.concatenate([series["max"][k], series["min"][k][::-1]]),
                                     fill="toself", fillcolor=color, opacity=0.2, line={"width": 0},
                                     hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=series["mean"][k], mode="lines", name=layer, line={"color": color},
                                 hovertemplate=f"{layer}<br>step %{{x}}<br>%{{y:.3g}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="training step",
                      yaxis_title=label(matrix.stat) + (" (log scale)" if log else ""),
                      legend={"orientation": "h", "y": -0.25})
    if log:
        fig.update_yaxes(type="log", exponentformat="power")
    return fig


def ratio_figure(matrices: Sequence[StatMatrix], colors: Mapping[str, str], names: Mapping[str, str],
                 max_points: int = 400) -> go.Figure:
    """The first layer's statistic divided by the last layer's, over steps, one line per run (log scale)."""
    title = "First-layer / last-layer gradient ratio over steps"
    fig = go.Figure()
    for matrix in matrices:
        first, last, ratio = first_last_ratio(matrix)
        if not first:
            continue
        buckets, series = downsample(ratio[None, :], matrix.steps, max_points)
        fig.add_trace(go.Scatter(
            x=buckets.first_step, y=series["mean"][0], mode="lines", name=names.get(matrix.run, matrix.run),
            line={"color": colors.get(matrix.run, PALETTE[0])},
            hovertemplate=f"{first} / {last}<br>step %{{x}}<br>ratio %{{y:.3g}}<extra></extra>"))
    if not fig.data:
        return _empty(title, "Needs at least two layers with this statistic.")
    fig.add_hline(y=1.0, line={"dash": "dot", "color": "#999999"})
    fig.update_layout(title=title, xaxis_title="training step",
                      yaxis_title="first / last layer (log scale; 1 = equal)", legend={"orientation": "h", "y": -0.25})
    fig.update_yaxes(type="log", exponentformat="power")
    return fig


def loss_and_norm_figure(step_frames: Mapping[str, pd.DataFrame], colors: Mapping[str, str],
                         names: Mapping[str, str], max_points: int = 400) -> go.Figure:
    """Loss and the total gradient norm on one shared step axis, one colour per run."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("loss", "total gradient norm ‖∇L‖ (log scale)"))
    for run, steps in step_frames.items():
        if steps.empty:
            continue
        s = steps["step"].to_numpy()
        for row, column in ((1, "loss"), (2, "grad_norm_total")):
            if column not in steps:
                continue
            buckets, series = downsample(steps[column].to_numpy(dtype=float)[None, :], s, max_points)
            fig.add_trace(go.Scatter(x=buckets.first_step, y=series["mean"][0], mode="lines",
                                     name=names.get(run, run), legendgroup=run, showlegend=row == 1,
                                     line={"color": colors.get(run, PALETTE[0])},
                                     hovertemplate=f"{column}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>"),
                          row=row, col=1)
    fig.update_yaxes(type="log", exponentformat="power", row=2, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="‖∇L‖₂", row=2, col=1)
    fig.update_xaxes(title_text="training step", row=2, col=1)
    fig.update_layout(title="Loss and total gradient norm", height=520, legend={"orientation": "h", "y": -0.15})
    return fig


def histogram_figure(hists: Sequence[HistogramMatrix], names: Mapping[str, str],
                     max_columns: int = 300) -> go.Figure:
    """log10|g| distributions over steps, one heatmap per run, with zeros and NaN/Inf shown as their own rows."""
    hists = [h for h in hists if not h.empty]
    title = "Distribution of log10|g| over steps"
    if not hists:
        return _empty(title, "No histograms recorded for this layer. Record with histogram_every=N.")
    fig = make_subplots(rows=len(hists), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[names.get(h.run, h.run) for h in hists])
    for i, h in enumerate(hists, start=1):
        centers = (h.edges[:-1] + h.edges[1:]) / 2
        occupied = np.flatnonzero(h.counts.sum(axis=1) > 0)
        lo, hi = (occupied[0], occupied[-1] + 1) if len(occupied) else (0, len(centers))
        lo, hi = max(lo - 2, 0), min(hi + 2, len(centers))
        stacked = np.vstack([h.counts[lo:hi], h.zeros[None, :], h.nonfinite[None, :]])
        buckets, series = downsample(stacked, h.steps, max_columns)
        y = [f"{c:.2f}" for c in centers[lo:hi]] + ["zero", "NaN/Inf"]
        z = np.log10(1 + series["mean"]).astype(np.float32)
        fig.add_trace(go.Heatmap(z=z, x=buckets.first_step, y=y, colorscale=SEQUENTIAL, showscale=i == 1,
                                 colorbar={"title": {"text": "log10(1+count)"}}, customdata=series["mean"],
                                 hovertemplate="step %{x}<br>log10|g| bin %{y}<br>count %{customdata:.0f}"
                                               "<extra></extra>"), row=i, col=1)
        fig.update_yaxes(title_text="log10|g|", type="category", row=i, col=1)
    fig.update_xaxes(title_text="training step", row=len(hists), col=1)
    fig.update_layout(title=f"{title} — layer {hists[0].layer} ({hists[0].kind.replace('_', ' ')})",
                      height=320 * len(hists) + 120)
    return fig


def quantile_figure(quantiles: Sequence[pd.DataFrame], colors: Mapping[str, str],
                    names: Mapping[str, str]) -> go.Figure:
    """Median and 5–95 % band of log10|g| per run on one chart, for overlaying runs."""
    fig = go.Figure()
    for q in quantiles:
        if q.empty:
            continue
        run = q["run"].iloc[0]
        color = colors.get(run, PALETTE[0])
        fig.add_trace(go.Scatter(x=np.concatenate([q["step"], q["step"][::-1]]),
                                 y=np.concatenate([q["q95"], q["q05"][::-1]]), fill="toself", fillcolor=color,
                                 opacity=0.2, line={"width": 0}, hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=q["step"], y=q["q50"], mode="lines", name=names.get(run, run),
                                 line={"color": color},
                                 customdata=np.stack([q["q05"], q["q95"], q["zeros"], q["nonfinite"]], axis=1),
                                 hovertemplate="step %{x}<br>median log10|g| %{y:.2f}<br>5–95 %: %{customdata[0]:.2f}"
                                               " to %{customdata[1]:.2f}<br>zeros %{customdata[2]:.0f}, "
                                               "NaN/Inf %{customdata[3]:.0f}<extra></extra>"))
    if not fig.data:
        return _empty("log10|g| quantiles", "No histograms recorded.")
    fig.update_layout(title="Median log10|g| with its 5–95 % band, runs overlaid", xaxis_title="training step",
                      yaxis_title="log10|g|", legend={"orientation": "h", "y": -0.25})
    return fig


def kernel_grid_figure(kernels: np.ndarray, title: str, zmax: float | None = None,
                       out_channels: Sequence[int] | None = None,
                       in_channels: Sequence[int] | None = None) -> go.Figure:
    """A grid of k×k tiles, one per (output channel, input channel) pair, on one symmetric colour scale.

    Args:
        kernels: (C_out, C_in, kH, kW) array (a 1-D conv's (C_out, C_in, k) is drawn with kH = 1).
        title: Figure title.
        zmax: Colour limit (±zmax); default the largest |value| shown.
        out_channels: Output-channel indices of the rows (for hover), default 0..C_out-1.
        in_channels: Input-channel indices of the columns, default 0..C_in-1.
    """
    if kernels.ndim == 3:
        kernels = kernels[:, :, None, :]
    c_out, c_in, kh, kw = kernels.shape
    out_channels = list(range(c_out)) if out_channels is None else list(out_channels)
    in_channels = list(range(c_in)) if in_channels is None else list(in_channels)
    grid = np.full((c_out * (kh + 1) - 1, c_in * (kw + 1) - 1), np.nan, dtype=np.float32)
    info = np.full(grid.shape + (4,), -1, dtype=np.int32)
    for o in range(c_out):
        for i in range(c_in):
            r, c = o * (kh + 1), i * (kw + 1)
            grid[r:r + kh, c:c + kw] = kernels[o, i]
            info[r:r + kh, c:c + kw, 0] = out_channels[o]
            info[r:r + kh, c:c + kw, 1] = in_channels[i]
            info[r:r + kh, c:c + kw, 2] = np.arange(kh)[:, None]
            info[r:r + kh, c:c + kw, 3] = np.arange(kw)[None, :]
    limit = float(zmax) if zmax else float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    limit = limit or 1.0
    fig = go.Figure(go.Heatmap(
        z=grid, zmin=-limit, zmax=limit, colorscale=DIVERGING, zmid=0, customdata=info,
        hovertemplate="out %{customdata[0]}, in %{customdata[1]}<br>position (%{customdata[2]}, %{customdata[3]})"
                      "<br>value %{z:.4g}<extra></extra>", colorbar={"title": {"text": "value"}}))
    fig.update_xaxes(showticklabels=False, title_text=f"input channel (tiles of {kh}×{kw})", showgrid=False,
                     zeroline=False)
    fig.update_yaxes(showticklabels=False, title_text="output channel", autorange="reversed", showgrid=False,
                     zeroline=False, scaleanchor="x")
    fig.update_layout(title=title, height=max(300, min(900, 22 * c_out * (kh + 1) + 120)))
    return fig
