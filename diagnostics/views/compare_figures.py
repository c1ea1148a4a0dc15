"""Plotly figures of a comparison (data in, figure out): curves, gradient vs depth, first/last ratio."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from ..experiments.comparison import HEALTHY_BAND, first_last_ratio

#: Okabe–Ito colours (distinguishable with the common colour-vision deficiencies), one per variant.
OKABE_ITO: tuple[str, ...] = ("#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
                              "#000000")
VARIANT_COLOURS: dict[str, str] = {"plain": "#D55E00", "batchnorm": "#0072B2", "residual": "#009E73",
                                   "residual+batchnorm": "#CC79A7"}
#: Line styles that tell chosen steps apart in the gradient-vs-depth figure.
DASHES: tuple[str, ...] = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def colour(variant: str, position: int = 0) -> str:
    """The colour of a variant (a standard one keeps its colour in every figure)."""
    return VARIANT_COLOURS.get(variant, OKABE_ITO[(4 + position) % len(OKABE_ITO)])


def _layout(fig: go.Figure, title: str, x: str, y: str, log_y: bool = False) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, legend_title_text="variant",
                      hovermode="x unified", margin={"t": 60})
    if log_y:
        fig.update_yaxes(type="log", exponentformat="power")
    return fig


def loss_figure(steps: pd.DataFrame) -> go.Figure:
    """Training loss per step, one line per variant.

    Args:
        steps: ``ComparisonData.steps`` (columns ``variant, step, loss``).
    """
    fig = go.Figure()
    for i, (variant, s) in enumerate(steps.groupby("variant", sort=False)):
        fig.add_trace(go.Scatter(x=s["step"], y=s["loss"], mode="lines", name=variant,
                                 line={"color": colour(variant, i)}))
    return _layout(fig, "Training loss", "optimiser step", "cross-entropy loss (nats, batch mean)")


def accuracy_figure(steps: pd.DataFrame) -> go.Figure:
    """Held-out accuracy at the evaluated steps, one line per variant.

    Args:
        steps: ``ComparisonData.steps`` (columns ``variant, step, accuracy``).
    """
    fig = go.Figure()
    for i, (variant, s) in enumerate(steps.groupby("variant", sort=False)):
        s = s.dropna(subset=["accuracy"]) if "accuracy" in s else s.iloc[0:0]
        fig.add_trace(go.Scatter(x=s["step"], y=100 * s.get("accuracy", pd.Series(dtype=float)),
                                 mode="lines+markers", name=variant, line={"color": colour(variant, i)}))
    fig = _layout(fig, "Held-out accuracy", "optimiser step", "accuracy on the held-out split (%)")
    fig.update_yaxes(range=[0, 100])
    return fig


def profile_steps(steps: Sequence[int], count: int = 3) -> list[int]:
    """Default steps for the gradient-vs-depth figure: first, middle and last of the recorded steps."""
    ordered = sorted(set(int(s) for s in steps))
    if not ordered:
        return []
    picks = [ordered[round(i * (len(ordered) - 1) / max(1, count - 1))] for i in range(count)]
    return sorted(set(picks))


def depth_figure(layers: pd.DataFrame, steps: Sequence[int], stat: str = "weight_grad_norm") -> go.Figure:
    """Gradient magnitude of every conv layer against its depth at chosen steps (log scale).

    Colour = variant, line style = step.

    Args:
        layers: ``ComparisonData.layers`` (columns ``variant, step, conv_index`` and ``stat``).
        steps: The steps to draw (one line per variant and step).
        stat: ``weight_grad_norm`` (‖∂L/∂W‖) or ``act_grad_norm`` (‖∂L/∂Y‖).
    """
    label = {"weight_grad_norm": "weight-gradient norm ‖∂L/∂W‖", "act_grad_norm": "output-gradient norm ‖∂L/∂Y‖"}
    fig = go.Figure()
    for i, (variant, f) in enumerate(layers.groupby("variant", sort=False)):
        for j, step in enumerate(steps):
            at = f[f["step"] == step].sort_values("conv_index")
            if at.empty:
                continue
            fig.add_trace(go.Scatter(x=at["conv_index"], y=at[stat], mode="lines+markers",
                                     name=f"{variant}, step {step}", legendgroup=variant,
                                     line={"color": colour(variant, i), "dash": DASHES[j % len(DASHES)]}))
    return _layout(fig, "Gradient magnitude vs depth", "conv layer (execution order; 1 = nearest the input)",
                   f"{label.get(stat, stat)} (log scale)", log_y=True)


def ratio_figure(layers: pd.DataFrame) -> go.Figure:
    """First/last conv-layer weight-gradient ratio over steps (log scale), with the healthy band shaded.

    Args:
        layers: ``ComparisonData.layers``.
    """
    ratios = first_last_ratio(layers)
    fig = go.Figure()
    lo, hi = HEALTHY_BAND
    fig.add_hrect(y0=lo, y1=hi, fillcolor="#999999", opacity=0.15, line_width=0)
    # On a log axis shapes take data values but annotations take log10 values.
    fig.add_annotation(text=f"healthy band {lo:g}–{hi:g}", xref="paper", x=0.0, y=math.log10(hi), yref="y",
                       showarrow=False, xanchor="left", yanchor="bottom")
    for i, (variant, r) in enumerate(ratios.groupby("variant", sort=False)):
        fig.add_trace(go.Scatter(x=r["step"], y=r["ratio"], mode="lines", name=variant,
                                 line={"color": colour(variant, i)}))
    return _layout(fig, "First / last conv layer gradient ratio", "optimiser step",
                   "‖∂L/∂W‖ first ÷ last conv layer (ratio, log scale)", log_y=True)
