"""The Compare training page's view: a comparison's runs in, its summary, plain-language reading and figures out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..experiments.comparison import CONV_TYPES, ComparisonData
from . import figures
from .gains import cumulative_figure, gain_figure, gain_profiles, missing_note
from .gradient_flow import ratio_rows, step_rows
from .sweep import init_reading, is_sweep, run_ratios, sweep_figure
from .matrices import StatMatrix, depth_profile, first_last_ratio, stat_matrix_from_frame
from .text import markdown_text, message_text

#: The first/last ratio band in which gradient flow counts as healthy.
HEALTHY_BAND: tuple[float, float] = (0.01, 100.0)
#: Steps averaged for the final loss.
FINAL_WINDOW = 10
#: The gradient statistics the page offers for gradient vs depth.
DEPTH_STATS: tuple[str, ...] = ("weight_grad_norm", "act_grad_norm")
#: Points per curve at most (longer runs are bucketed).
MAX_POINTS = 400


@dataclass
class CompareView:
    """Everything the Compare training page shows of one comparison."""

    summary: pd.DataFrame            # one row per variant (see :func:`summarize`)
    reading: str                     # the plain-language reading (markdown)
    figures: dict[str, go.Figure]    # loss, accuracy, depth, ratio; gain, cumulative (block gains); sweep
    ratios: pd.DataFrame             # variant, step, first, last, ratio (for download)
    steps: list[int]                 # the recorded steps (for the step picker)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)   # per run: step-0 and final ratios (sweep.run_ratios)
    notes: list[str] = field(default_factory=list)             # markdown: the init reading, missing block gains


def conv_matrix(data: ComparisonData, variant: str, stat: str) -> StatMatrix:
    """One statistic of a variant's conv layers as a (layer × step) matrix (rows in execution order)."""
    layers = data.layers[data.layers["variant"] == variant] if not data.layers.empty else data.layers
    return stat_matrix_from_frame(layers, variant, stat)


def ratio_frame(data: ComparisonData, stat: str = "weight_grad_norm") -> pd.DataFrame:
    """Per (variant, step): the first conv layer's statistic, the last one's, and first/last.

    Returns:
        Columns ``variant, step, first, last, ratio`` (ratio NaN where either is missing or the last is zero).
    """
    frames = []
    for variant in data.runs:
        matrix = conv_matrix(data, variant, stat)
        first, last, ratio = first_last_ratio(matrix, CONV_TYPES)
        if not first:
            continue
        frames.append(pd.DataFrame({"variant": variant, "step": matrix.steps,
                                    "first": matrix.values[matrix.layers.index(first)],
                                    "last": matrix.values[matrix.layers.index(last)], "ratio": ratio}))
    columns = ["variant", "step", "first", "last", "ratio"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def recorded_steps(data: ComparisonData) -> list[int]:
    """The steps at which the comparison's conv layers were recorded, in order."""
    return sorted(int(s) for s in data.layers["step"].unique()) if not data.layers.empty else []


def profile_steps(steps: Sequence[int], count: int = 3) -> list[int]:
    """Default steps for the gradient-vs-depth figure: first, middle and last of the recorded steps."""
    ordered = sorted(set(int(s) for s in steps))
    if not ordered:
        return []
    picks = [ordered[round(i * (len(ordered) - 1) / max(1, count - 1))] for i in range(count)]
    return sorted(set(picks))


def compare_view(data: ComparisonData, stat: str = "weight_grad_norm", steps: Sequence[int] | None = None,
                 num_classes: int | None = None) -> CompareView:
    """Summary, reading and figures of one comparison (:func:`~diagnostics.experiments.comparison.load_comparison`).

    Args:
        data: The comparison's runs read back.
        stat: The statistic of gradient vs depth (one of :data:`DEPTH_STATS`).
        steps: The steps drawn in gradient vs depth (default first, middle and last).
        num_classes: Classes of the dataset (default from the runs' metadata, else 10).
    """
    if num_classes is None:
        num_classes = next(iter(data.meta.values()), {}).get("config", {}).get("num_classes", 10)
    summary = summarize(data)
    recorded = recorded_steps(data)
    chosen = profile_steps(recorded) if steps is None else list(steps)
    variants = list(data.runs)
    colors, names = figures.variant_colors(variants), {v: v for v in variants}
    curves = {v: step_rows(v, data.steps[data.steps["variant"] == v], ("loss",), MAX_POINTS) for v in variants}
    evaluated = {v: step_rows(v, data.steps[data.steps["variant"] == v].dropna(subset=["accuracy"])
                              if "accuracy" in data.steps else data.steps.iloc[0:0], ("accuracy",), MAX_POINTS)
                 for v in variants}
    depth = [depth_profile(conv_matrix(data, v, stat), s) for v in variants for s in chosen]
    figs = {
        "loss": figures.curves_figure(curves, "loss", colors, names, "Training loss",
                                      "cross-entropy loss (nats, batch mean)"),
        "accuracy": figures.curves_figure(evaluated, "accuracy", colors, names, "Held-out accuracy",
                                          "accuracy on the held-out split (%)", markers=True, scale=100.0),
        "depth": figures.depth_figure(depth, stat, True, colors, names,
                                      x_title="conv layer (execution order; 0 = nearest the input)"),
        "ratio": figures.ratio_figure([ratio_rows(conv_matrix(data, v, "weight_grad_norm"), MAX_POINTS, CONV_TYPES)
                                       for v in variants], colors, names,
                                      title="First / last conv layer gradient ratio", band=HEALTHY_BAND),
    }
    figs["accuracy"].update_yaxes(range=[0, 100])
    per_run = run_ratios(data)
    swept = is_sweep(per_run)
    blocks = {v: data.blocks[data.blocks["variant"] == v] if not data.blocks.empty else data.blocks for v in variants}
    profiles = gain_profiles(blocks, [0] if swept else None)     # a sweep's many runs: step 0 only
    if profiles:                                        # runs without a blocks table get a note instead
        figs["gain"] = gain_figure(profiles, colors, names)
        figs["cumulative"] = cumulative_figure(profiles, colors, names)
    if swept:
        figs["sweep"] = sweep_figure(per_run)
    notes = [n for n in (init_reading(per_run), missing_note([v for v in variants if blocks[v].empty], names)) if n]
    return CompareView(summary, describe(summary, num_classes), figs, ratio_frame(data), recorded, per_run, notes)


def summarize(data: ComparisonData) -> pd.DataFrame:
    """One row per variant: final loss (mean of the last steps), held-out accuracy, first/last ratio, divergence.

    Columns: ``variant, run, steps, final_loss, accuracy, ratio_median, ratio_final, diverged_step,
    diverged_layer``. ``ratio_median`` is the median of first/last over all recorded steps.
    """
    ratios = ratio_frame(data)
    rows = []
    for variant, run in data.runs.items():
        s = data.steps[data.steps["variant"] == variant].sort_values("step")
        r = ratios[ratios["variant"] == variant].dropna(subset=["ratio"])
        acc = s["accuracy"].dropna() if "accuracy" in s else pd.Series(dtype=float)
        finite_loss = s["loss"][np.isfinite(s["loss"])]
        bad = data.meta.get(variant, {}).get("first_nonfinite") or {}
        rows.append({
            "variant": variant, "run": run, "steps": int(len(s)),
            "final_loss": float(finite_loss.tail(FINAL_WINDOW).mean()) if len(finite_loss) else math.nan,
            "accuracy": float(acc.iloc[-1]) if len(acc) else math.nan,
            "ratio_median": float(r["ratio"].median()) if len(r) else math.nan,
            "ratio_final": float(r["ratio"].iloc[-1]) if len(r) else math.nan,
            "diverged_step": bad.get("step"),
            "diverged_layer": bad.get("forward") or bad.get("backward"),
        })
    return pd.DataFrame(rows, columns=["variant", "run", "steps", "final_loss", "accuracy", "ratio_median",
                                       "ratio_final", "diverged_step", "diverged_layer"])


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _decades(ratio: float) -> str:
    return f"{abs(math.log10(ratio)):.1f}"


def describe(summary: pd.DataFrame, num_classes: int = 10) -> str:
    """A one-paragraph plain-language reading of a comparison, generated from its :func:`summarize` numbers.

    Args:
        summary: The output of :func:`summarize`.
        num_classes: Classes of the dataset (chance accuracy is ``1 / num_classes``).
    """
    if summary.empty:
        return "No runs to compare yet."
    chance = 1.0 / num_classes
    lo, hi = HEALTHY_BAND
    sentences = []
    for row in summary.itertuples(index=False):
        ratio, acc, name = row.ratio_median, row.accuracy, f"**{markdown_text(row.variant)}**"   # names are data
        if pd.notna(row.diverged_step):
            where = f" (first NaN/Inf in layer {message_text(row.diverged_layer)})" \
                if pd.notna(row.diverged_layer) else ""
            sentences.append(f"{name} diverged at step {int(row.diverged_step)}{where}, so its curves stop "
                             "there; a lower learning rate usually avoids it.")
            continue
        learned = not math.isnan(acc) and acc >= chance + 0.5 * (1 - chance)
        barely = not math.isnan(acc) and acc < chance + 0.15
        acc_text = "no held-out accuracy yet" if math.isnan(acc) else f"{_pct(acc)} held-out accuracy"
        if math.isnan(ratio):
            sentences.append(f"{name} has no conv-layer gradients recorded yet ({acc_text}).")
        elif ratio < lo:
            tail = (f"its early layers barely learned and it stayed near chance ({acc_text}; chance is "
                    f"{_pct(chance)})" if barely else f"yet it reached {acc_text}, learning mostly in its last "
                    "layers")
            sentences.append(f"In {name} the first conv layer received a gradient about {_decades(ratio)} orders "
                             f"of magnitude smaller than the last one (median ratio {ratio:.1e}): the gradient "
                             f"vanished on its way back to the input, so {tail}.")
        elif ratio > hi:
            sentences.append(f"In {name} the first conv layer's gradient was about {_decades(ratio)} orders of "
                             f"magnitude larger than the last one's (median ratio {ratio:.1e}): gradients grew "
                             f"toward the input (exploding), with {acc_text}.")
        else:
            verb = "and learned" if learned else "but learned little so far"
            sentences.append(f"{name} kept the first/last gradient ratio within {lo:g}–{hi:g} (median "
                             f"{ratio:.2g}): every layer got a comparable gradient, {verb} ({acc_text}).")
    finished = summary.dropna(subset=["accuracy"])
    if len(finished) > 1:
        best = finished.loc[finished["accuracy"].idxmax()]
        sentences.append(f"Best held-out accuracy: **{markdown_text(best['variant'])}** ({_pct(best['accuracy'])}).")
    return " ".join(sentences)
