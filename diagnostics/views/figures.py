"""Every Plotly figure of the library: data in, figure out, one palette.

Figures only draw: a view reduces the store's data first (:class:`~.matrices.Bucketed` rows, depth profiles,
quantiles, kernel arrays) and passes the result in. Colour-blind-safe colours, a title and labelled axes on
every figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..recording.stats import STAT_LABELS
from .matrices import Bucketed
from .text import plotly_text

#: Okabe–Ito colours (distinguishable with the common colour-vision deficiencies), black replaced by grey so
#: that lines read on the dark theme too. The only palette of the library.
PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#999999",
                            "#F0E442")
#: Sequential colour scale for heatmaps (perceptually uniform, colour-blind-safe).
SEQUENTIAL = "Viridis"
#: Diverging colour scale for signed values (kernels, gradients), symmetric around zero.
DIVERGING = "RdBu_r"
#: Line styles that tell chosen steps of one run apart.
DASHES: tuple[str, ...] = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
#: The standard comparison variants keep their colour in every figure.
VARIANT_COLORS: dict[str, str] = {"plain": PALETTE[3], "batchnorm": PALETTE[0], "residual": PALETTE[2],
                                  "residual+batchnorm": PALETTE[4]}
#: The x axis of gradient vs depth over every layer.
DEPTH_AXIS = "depth (layer order in the forward pass)"


def run_colors(all_runs: Sequence[str]) -> dict[str, str]:
    """A colour per run, fixed by the run's position in the whole store, so it is the same on every page."""
    return {run: PALETTE[i % len(PALETTE)] for i, run in enumerate(all_runs)}


def variant_colors(variants: Sequence[str]) -> dict[str, str]:
    """A colour per comparison variant: the standard ones fixed, others from the rest of the palette."""
    spare = [c for c in PALETTE if c not in VARIANT_COLORS.values()]
    out, k = {}, 0
    for variant in variants:
        if variant in VARIANT_COLORS:
            out[variant] = VARIANT_COLORS[variant]
        else:
            out[variant], k = spare[k % len(spare)], k + 1
    return out


def label(stat: str) -> str:
    """The axis label of a statistic (its name when it has none)."""
    return STAT_LABELS.get(stat, stat)


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False},
                      annotations=[{"text": message, "showarrow": False, "font": {"size": 14}}])
    return fig


def _log_y(fig: go.Figure, log: bool) -> go.Figure:
    if log:
        fig.update_yaxes(type="log", exponentformat="power")
    return fig


def depth_figure(profiles: Sequence[pd.DataFrame], stat: str, log: bool, colors: Mapping[str, str],
                 names: Mapping[str, str] | None = None, x_title: str = DEPTH_AXIS) -> go.Figure:
    """Gradient vs depth: one line per (run, step), colour = run, line style = step, names on hover.

    Args:
        profiles: :func:`~.matrices.depth_profile` frames (``run, step, layer, type, depth, value``).
        stat: The statistic drawn (for the labels).
        log: Log-scale y axis.
        colors: Run -> colour.
        names: Run -> legend name (default the run id).
        x_title: The x axis title (what ``depth`` counts).
    """
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
            name=f"{plotly_text((names or {}).get(run, run))} · step {step}", legendgroup=run,
            line={"color": colors.get(run, PALETTE[0]), "dash": DASHES[k % len(DASHES)], "width": 2},
            marker={"size": 5}, customdata=np.stack([profile["layer"], profile["type"]], axis=1),
            hovertemplate="layer %{customdata[0]} (%{customdata[1]})<br>depth %{x}<br>"
                          f"{stat} %{{y:.3g}}<extra>step {step}</extra>"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=label(stat) + (" (log scale)" if log else ""),
                      hovermode="closest", legend={"orientation": "h", "y": -0.25})
    return _log_y(fig, log)


def heatmap_figure(series: Bucketed, name: str | None = None) -> go.Figure:
    """Layer × step heatmap; colour is log10 of the statistic (bucket mean when steps are bucketed).

    Args:
        series: The layers to draw (rows, forward order) from :func:`~.matrices.matrix_rows`.
        name: The run's display name.
    """
    title = f"{label(series.stat)} per layer and step — {plotly_text(name or series.run)}"
    if series.empty or not np.isfinite(series.mean).any():
        return _empty(title, "Nothing recorded for this statistic (e.g. no layer has weights).")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log10(np.where(series.mean > 0, series.mean, np.nan)).astype(np.float32)   # (R, B)
    span = np.stack([series.first_step, series.last_step], axis=1)                         # (B, 2)
    fig = go.Figure(go.Heatmap(
        z=z, x=series.first_step, y=[plotly_text(r) for r in series.rows], colorscale=SEQUENTIAL,
        colorbar={"title": {"text": "log10"}},
        customdata=np.broadcast_to(span, (len(series.rows), *span.shape)),
        hovertemplate="layer %{y}<br>steps %{customdata[0]}–%{customdata[1]}<br>log10 value %{z:.2f}"
                      "<extra></extra>"))
    note = f" (bucket means of {series.steps} steps in {len(series.first_step)} columns)" if series.bucketed else ""
    fig.update_layout(title=title, xaxis_title="training step" + note,
                      yaxis_title="layer (forward order, first at top)",
                      height=max(320, min(1400, 16 * len(series.rows) + 140)))
    fig.update_yaxes(autorange="reversed")
    return fig


def trends_figure(series: Bucketed, log: bool, name: str | None = None) -> go.Figure:
    """Chosen layers over steps: bucket mean as a line, bucket min–max as a band."""
    title = f"{label(series.stat)} over steps — {plotly_text(name or series.run)}"
    if series.empty:
        return _empty(title, "Pick one or more layers.")
    fig = go.Figure()
    x = series.first_step
    for k, layer in enumerate(series.rows):
        color = PALETTE[k % len(PALETTE)]
        if series.bucketed:
            fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]),
                                     y=np.concatenate([series.max[k], series.min[k][::-1]]),
                                     fill="toself", fillcolor=color, opacity=0.2, line={"width": 0},
                                     hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=series.mean[k], mode="lines", name=plotly_text(layer), line={"color": color},
                                 hovertemplate=f"{layer}<br>step %{{x}}<br>%{{y:.3g}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="training step",
                      yaxis_title=label(series.stat) + (" (log scale)" if log else ""),
                      legend={"orientation": "h", "y": -0.25})
    return _log_y(fig, log)


def ratio_figure(ratios: Sequence[Bucketed], colors: Mapping[str, str], names: Mapping[str, str],
                 title: str = "First-layer / last-layer gradient ratio over steps",
                 band: tuple[float, float] | None = None) -> go.Figure:
    """The first layer's statistic divided by the last layer's, over steps, one line per run (log scale).

    Args:
        ratios: One single-row series per run (the row named ``"<first> / <last>"``), from the view.
        colors: Run -> colour.
        names: Run -> legend name.
        title: The figure's title.
        band: A ``(low, high)`` band of healthy ratios to shade, if any.
    """
    fig = go.Figure()
    if band is not None:
        lo, hi = band
        fig.add_hrect(y0=lo, y1=hi, fillcolor="#999999", opacity=0.15, line_width=0)
        # On a log axis shapes take data values but annotations take log10 values.
        fig.add_annotation(text=f"healthy band {lo:g}–{hi:g}", xref="paper", x=0.0, y=math.log10(hi), yref="y",
                           showarrow=False, xanchor="left", yanchor="bottom")
    for series in ratios:
        if series.empty:
            continue
        fig.add_trace(go.Scatter(
            x=series.first_step, y=series.mean[0], mode="lines", name=plotly_text(names.get(series.run, series.run)),
            line={"color": colors.get(series.run, PALETTE[0])},
            hovertemplate=f"{series.rows[0]}<br>step %{{x}}<br>ratio %{{y:.3g}}<extra></extra>"))
    if not fig.data:
        return _empty(title, "Needs at least two layers with this statistic.")
    fig.add_hline(y=1.0, line={"dash": "dot", "color": "#999999"})
    fig.update_layout(title=title, xaxis_title="training step",
                      yaxis_title="first / last layer (ratio, log scale; 1 = equal)",
                      legend={"orientation": "h", "y": -0.25})
    return _log_y(fig, True)


def curves_figure(series: Mapping[str, Bucketed], row: str, colors: Mapping[str, str], names: Mapping[str, str],
                  title: str, y_title: str, log: bool = False, markers: bool = False,
                  scale: float = 1.0) -> go.Figure:
    """One per-step quantity (a row of each run's series, e.g. ``loss``), one line per run.

    Args:
        series: Run -> bucketed per-step quantities.
        row: The quantity drawn (a name in each series' rows; runs without it are left out).
        colors: Run -> colour.
        names: Run -> legend name.
        title: The figure's title.
        y_title: The y axis title.
        log: Log-scale y axis.
        markers: Draw a marker at every point (for sparse quantities such as held-out accuracy).
        scale: Multiplies every value (e.g. 100 for percentages).
    """
    fig = go.Figure()
    for run, s in series.items():
        if row not in s.rows:
            continue
        y = s.mean[s.rows.index(row)]
        keep = np.isfinite(y)
        fig.add_trace(go.Scatter(x=s.first_step[keep], y=scale * y[keep], mode="lines+markers" if markers else "lines",
                                 name=plotly_text(names.get(run, run)), line={"color": colors.get(run, PALETTE[0])},
                                 hovertemplate=f"{row}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="training step", yaxis_title=y_title,
                      legend={"orientation": "h", "y": -0.25}, hovermode="x unified")
    return _log_y(fig, log)


def loss_and_norm_figure(series: Mapping[str, Bucketed], colors: Mapping[str, str],
                         names: Mapping[str, str]) -> go.Figure:
    """Loss and the total gradient norm on one shared step axis, one colour per run."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("loss", "total gradient norm ‖∇L‖ (log scale)"))
    for run, s in series.items():
        for row, column in ((1, "loss"), (2, "grad_norm_total")):
            if column not in s.rows or s.empty:
                continue
            fig.add_trace(go.Scatter(x=s.first_step, y=s.mean[s.rows.index(column)], mode="lines",
                                     name=plotly_text(names.get(run, run)), legendgroup=run, showlegend=row == 1,
                                     line={"color": colors.get(run, PALETTE[0])},
                                     hovertemplate=f"{column}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>"),
                          row=row, col=1)
    fig.update_yaxes(type="log", exponentformat="power", row=2, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="‖∇L‖₂", row=2, col=1)
    fig.update_xaxes(title_text="training step", row=2, col=1)
    fig.update_layout(title="Loss and total gradient norm", height=520, legend={"orientation": "h", "y": -0.15})
    return fig


def histogram_figure(hists: Sequence[Bucketed], names: Mapping[str, str], layer: str = "",
                     kind: str = "") -> go.Figure:
    """log10|g| distributions over steps, one heatmap per run, with zeros and NaN/Inf shown as their own rows.

    Args:
        hists: One series per run whose rows are the occupied bins (labelled by their centre), then ``zero``
            and ``NaN/Inf``; values are counts (from :func:`~.matrices.histogram_rows`).
        names: Run -> subplot title.
        layer: The layer drawn (for the title).
        kind: ``weight_grad`` or ``act_grad`` (for the title).
    """
    hists = [h for h in hists if not h.empty]
    title = "Distribution of log10|g| over steps"
    if not hists:
        return _empty(title, "No histograms recorded for this layer. Record with histogram_every=N.")
    fig = make_subplots(rows=len(hists), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[plotly_text(names.get(h.run, h.run)) for h in hists])
    for i, h in enumerate(hists, start=1):
        z = np.log10(1 + h.mean).astype(np.float32)
        fig.add_trace(go.Heatmap(z=z, x=h.first_step, y=list(h.rows), colorscale=SEQUENTIAL, showscale=i == 1,
                                 colorbar={"title": {"text": "log10(1+count)"}}, customdata=h.mean,
                                 hovertemplate="step %{x}<br>log10|g| bin %{y}<br>count %{customdata:.0f}"
                                               "<extra></extra>"), row=i, col=1)
        fig.update_yaxes(title_text="log10|g|", type="category", row=i, col=1)
    fig.update_xaxes(title_text="training step", row=len(hists), col=1)
    fig.update_layout(title=f"{title} — layer {plotly_text(layer)} ({kind.replace('_', ' ')})",
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
        fig.add_trace(go.Scatter(x=q["step"], y=q["q50"], mode="lines", name=plotly_text(names.get(run, run)),
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


def gradient_plane(array: np.ndarray, first: int = 0, second: int = 0) -> np.ndarray:
    """The 2-d slice of a gradient that a heatmap draws.

    Args:
        array: ``(A, B, H, W)`` -> ``array[first, second]``; ``(A, B, L)`` -> ``array[first, second]`` as one
            row; ``(A, B)`` whole; ``(C,)`` as one row.
        first: Index into the first dimension (arrays of 3 or more dimensions).
        second: Index into the second.

    Returns:
        A 2-d array.
    """
    if array.ndim >= 3:
        array = array[first, second]
    return np.atleast_2d(array)


_AXES = {
    ("input", 4): ("column w", "row h"), ("input", 3): ("position l", ""),
    ("input", 2): ("feature / channel", "sample n"),
    ("weight", 4): ("kernel column b", "kernel row a"), ("weight", 3): ("kernel tap a", ""),
    ("weight", 2): ("input feature", "output feature"), ("weight", 1): ("channel c", ""),
}


def gradient_figure(manual_grad: np.ndarray, autograd_grad: np.ndarray, title: str, tensor: str = "input",
                    first: int = 0, second: int = 0) -> go.Figure:
    """Three heatmaps side by side: the manual rule's gradient, autograd's, and their difference.

    The first two share one colour scale and the difference has its own, both ``RdBu_r`` (colour-blind-safe,
    diverging) and symmetric around zero, so white is zero and red and blue are opposite signs.

    Args:
        manual_grad: The manual rule's gradient, any shape :func:`gradient_plane` accepts.
        autograd_grad: Autograd's, the same shape.
        title: The figure's title.
        tensor: ``"input"`` or ``"weight"`` (for the axis labels).
        first: Which sample (input) or output channel (weight) to draw, for 3-d and 4-d arrays.
        second: Which channel (input) or input channel (weight).

    Returns:
        The figure.
    """
    a = gradient_plane(np.asarray(manual_grad, dtype=np.float64), first, second)
    b = gradient_plane(np.asarray(autograd_grad, dtype=np.float64), first, second)
    diff = a - b
    x_label, y_label = _AXES.get((tensor, manual_grad.ndim), ("column", "row"))
    limit = float(np.abs(np.concatenate([a.ravel(), b.ravel()])).max()) if a.size else 0.0
    limit = limit or 1.0
    diff_limit = float(np.abs(diff).max()) if diff.size else 0.0
    identical = diff_limit == 0.0
    diff_limit = diff_limit or 1e-16 * limit  # an exact match still gets a readable, symmetric scale
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.14,
                        subplot_titles=("manual rule", "autograd",
                                        "manual − autograd" + (" (identical)" if identical else "")))
    hover = "%{y}, %{x}: %{z:.6g}<extra></extra>"
    for col, z in ((1, a), (2, b)):
        fig.add_trace(go.Heatmap(z=z, coloraxis="coloraxis", hovertemplate=hover), row=1, col=col)
    fig.add_trace(go.Heatmap(z=diff, coloraxis="coloraxis2", hovertemplate=hover), row=1, col=3)
    colorbar = {"thickness": 12, "len": 0.9, "exponentformat": "e"}
    fig.update_layout(
        title=title,
        coloraxis={"colorscale": DIVERGING, "cmin": -limit, "cmax": limit, "cmid": 0.0,
                   "colorbar": {**colorbar, "x": 0.64, "title": {"text": "gradient"}}},
        coloraxis2={"colorscale": DIVERGING, "cmin": -diff_limit, "cmax": diff_limit, "cmid": 0.0,
                    "colorbar": {**colorbar, "x": 1.01, "title": {"text": "difference"}}},
        height=max(340, min(560, 40 * a.shape[0] + 200)),
    )
    fig.update_xaxes(title_text=x_label, showgrid=False, zeroline=False)
    fig.update_yaxes(autorange="reversed", showgrid=False, zeroline=False)
    fig.update_yaxes(title_text=y_label, row=1, col=1)
    for col in (2, 3):  # the same rows as the first heatmap: its labels serve all three
        fig.update_yaxes(showticklabels=False, row=1, col=col)
    return fig
