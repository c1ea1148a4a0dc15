"""Depth sweeps and the step-0 physics of a comparison: first/last output-gradient ratios per run, against depth.

The first/last **output-gradient** ratio is ‖∂L/∂Y‖ of the first conv layer over that of the last one. Unlike the
weight-gradient ratio it is not rescaled by the forward activations (∂L/∂W is ∂L/∂Y times the layer's input,
which shrinks by the same factor when an initialisation loses signal), so it is the one that shows vanishing
at initialisation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..experiments.comparison import CONV_TYPES, ComparisonData
from .figures import PALETTE, variant_colors
from .text import plotly_text

#: The columns of :func:`run_ratios`.
RATIO_COLUMNS = ["variant", "series", "depth", "init", "activation", "out_ratio_start", "out_ratio_end",
                 "weight_ratio_start", "accuracy"]


def _ratio(layers: pd.DataFrame, stat: str, step: int) -> float:
    at = layers[layers["step"] == step]
    if "type" in at:
        at = at[at["type"].isin(CONV_TYPES)]
    at = at.sort_values("conv_index" if "conv_index" in at else "depth")          # execution order
    if len(at) < 2:
        return math.nan
    first, last = float(at[stat].iloc[0]), float(at[stat].iloc[-1])
    return first / last if last > 0 else math.nan


def run_ratios(data: ComparisonData) -> pd.DataFrame:
    """One row per run: its series (variant name without the depth), depth, init, activation, the first/last
    output-gradient ratio at the first and the last recorded step, the weight-gradient ratio at the first, and
    the final held-out accuracy. Columns :data:`RATIO_COLUMNS`."""
    rows = []
    for variant in data.runs:
        meta = data.meta.get(variant, {})
        config = meta.get("config") or {}
        layers = data.layers[data.layers["variant"] == variant] if not data.layers.empty else data.layers
        steps = sorted(layers["step"].unique()) if not layers.empty else []
        acc = data.steps.loc[data.steps["variant"] == variant, "accuracy"].dropna() \
            if "accuracy" in data.steps else pd.Series(dtype=float)
        rows.append({
            "variant": variant, "series": meta.get("series") or variant, "depth": config.get("depth"),
            "init": config.get("init"), "activation": config.get("activation"),
            "out_ratio_start": _ratio(layers, "act_grad_norm", steps[0]) if steps else math.nan,
            "out_ratio_end": _ratio(layers, "act_grad_norm", steps[-1]) if steps else math.nan,
            "weight_ratio_start": _ratio(layers, "weight_grad_norm", steps[0]) if steps else math.nan,
            "accuracy": float(acc.iloc[-1]) if len(acc) else math.nan})
    return pd.DataFrame(rows, columns=RATIO_COLUMNS)


def is_sweep(ratios: pd.DataFrame) -> bool:
    """Whether the comparison ran a series at more than one depth."""
    return bool(len(ratios)) and bool((ratios.groupby("series")["depth"].nunique() > 1).any())


def sweep_figure(ratios: pd.DataFrame) -> go.Figure:
    """First/last output-gradient ratio at step 0 (solid) and at the end (dashed), and the final held-out
    accuracy, against depth: one colour per series."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("first / last conv output-gradient ratio ‖∂L/∂Y‖",
                                        "final held-out accuracy"))
    series = list(dict.fromkeys(ratios["series"]))
    colors = variant_colors(series)
    for series_name in series:
        rows = ratios[ratios["series"] == series_name].sort_values("depth")
        name = plotly_text(series_name)                      # series names come from run metadata: data
        color = colors.get(series_name, PALETTE[0])
        for column, dash, when in (("out_ratio_start", "solid", "step 0"), ("out_ratio_end", "dash", "end")):
            fig.add_trace(go.Scatter(x=rows["depth"], y=rows[column], mode="lines+markers", name=f"{name} · {when}",
                                     legendgroup=name, line={"color": color, "dash": dash},
                                     hovertemplate=f"{name}, {when}<br>depth %{{x}}<br>ratio %{{y:.3g}}<extra></extra>"),
                          row=1, col=1)
        fig.add_trace(go.Scatter(x=rows["depth"], y=100 * rows["accuracy"], mode="lines+markers", name=name,
                                 legendgroup=name, showlegend=False, line={"color": color},
                                 hovertemplate=f"{name}<br>depth %{{x}}<br>%{{y:.1f}} %<extra></extra>"), row=1, col=2)
    fig.update_yaxes(type="log", exponentformat="power", title_text="ratio (log scale; 1 = equal)", row=1, col=1)
    fig.update_yaxes(range=[0, 100], title_text="accuracy (%)", row=1, col=2)
    fig.update_xaxes(title_text="depth (conv layers)")
    fig.update_layout(title="Depth sweep: gradient ratio and accuracy against depth",
                      legend={"orientation": "h", "y": -0.25})
    return fig


def init_reading(ratios: pd.DataFrame) -> str | None:
    """The He et al. 2015 reading when a comparison has a Xavier and a He run of the same depth with ReLU.

    Under Xavier (variance 1/fan) each ReLU layer scales the backward signal by 1/√2 relative to He (2/fan_in),
    so at step 0 the first/last output-gradient ratio under Xavier is about (1/√2)^(L−1) times He's.
    """
    relu = ratios[ratios["activation"] == "relu"]
    for depth, rows in sorted(relu.groupby("depth"), key=lambda item: -item[0]):      # the deepest first
        xavier, he = rows[rows["init"] == "xavier"], rows[rows["init"] == "he"]
        if xavier.empty or he.empty:
            continue
        x, h = xavier.iloc[0], he.iloc[0]
        predicted = (1 / math.sqrt(2)) ** (int(depth) - 1)
        measured = x["out_ratio_start"] / h["out_ratio_start"]
        return (f"**At step 0, depth {int(depth)}:** the first/last output-gradient ratio ‖∂L/∂Y‖ is "
                f"{x['out_ratio_start']:.1e} under Xavier and {h['out_ratio_start']:.2g} under He, a factor "
                f"{measured:.1e}; the per-layer variance argument predicts (1/√2)^{int(depth) - 1} ≈ {predicted:.1e} "
                "(each ReLU layer halves the gradient's variance under Xavier and keeps it under He). The *weight*-"
                f"gradient ratio hides this ({x['weight_ratio_start']:.2g} under Xavier, "
                f"{h['weight_ratio_start']:.2g} under He): ∂L/∂W is the output gradient times the layer's input, "
                "and under Xavier the forward activations shrink toward the output by the same factor.")
    return None
