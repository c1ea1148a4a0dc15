"""Backward gain per block, for the Gradient flow and Compare pages: the blocks table in, profiles and figures out.

A block's backward gain is ‖∂L/∂x‖ / ‖∂L/∂y‖ (recorded by ``GradientMonitor(blocks=...)``). Where each block's
input is the previous block's output, the product of the gains from the last block back to block i is
‖∂L/∂x_i‖ / ‖∂L/∂y_last‖: how much of the gradient at the top still reaches block i. A plain stack multiplies
gains below 1 into an exponential decay; residual blocks keep each gain near 1, so the product stays flat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .figures import DASHES, PALETTE, _empty
from .text import markdown_text, plotly_text

#: The columns of :func:`gain_profiles`.
PROFILE_COLUMNS = ["run", "step", "block", "type", "index", "gain", "cumulative", "branch_share", "residual"]
BLOCK_AXIS = "block (execution order; 0 = nearest the input)"


def nearest_step(steps: Sequence[int], step: int) -> int:
    """The recorded step closest to ``step`` (the earlier one on a tie)."""
    ordered = np.asarray(sorted(steps))
    return int(ordered[np.argmin(np.abs(ordered - step))])


def gain_profile(blocks: pd.DataFrame, run: str, step: int) -> pd.DataFrame:
    """One run's blocks at one recorded step, in execution order, with the cumulative product of gains.

    Args:
        blocks: The run's blocks table (``RunStore.block_frame``): step, block, type, depth, gain, ...
        run: The run id (the ``run`` column of the result).
        step: A recorded step (the nearest one is used otherwise).

    Returns:
        Columns :data:`PROFILE_COLUMNS`; ``cumulative`` is the product of the gains from the last block back to
        this one (NaN from the first block without a gain downward, e.g. the block fed by the data).
    """
    if blocks.empty:
        return pd.DataFrame(columns=PROFILE_COLUMNS)
    step = nearest_step(blocks["step"].unique(), step)
    rows = blocks[blocks["step"] == step].sort_values("depth")
    gain = rows["gain"].to_numpy(dtype=float)                                     # (blocks,)
    cumulative = np.cumprod(gain[::-1])[::-1]                                     # NaN propagates toward the input
    return pd.DataFrame({"run": run, "step": step, "block": rows["block"].to_numpy(), "type": rows["type"].to_numpy(),
                         "index": np.arange(len(rows)), "gain": gain, "cumulative": cumulative,
                         "branch_share": rows["branch_share"].to_numpy(dtype=float),
                         "residual": rows["residual"].to_numpy(dtype=bool)})[PROFILE_COLUMNS]


def gain_profiles(frames: Mapping[str, pd.DataFrame], steps: Sequence[int] | None = None) -> list[pd.DataFrame]:
    """:func:`gain_profile` of every run with a blocks table, at each of ``steps`` (default the first and last)."""
    out = []
    for run, blocks in frames.items():
        if blocks.empty:
            continue
        recorded = sorted(int(s) for s in blocks["step"].unique())
        wanted = [recorded[0], recorded[-1]] if steps is None else list(steps)
        for step in dict.fromkeys(nearest_step(recorded, s) for s in wanted):
            out.append(gain_profile(blocks, run, step))
    return out


def missing_note(runs: Sequence[str], names: Mapping[str, str]) -> str | None:
    """The note for runs recorded without block gains, or ``None`` when every run has them."""
    if not runs:
        return None
    listed = ", ".join(markdown_text(names.get(r, r)) for r in runs)        # names are data, not Markdown
    return (f"No backward gain per block in {listed}: the run was recorded without `blocks=` (older comparisons, "
            "or the monitor's default). Record with `GradientMonitor(model, blocks=\"auto\")`; comparisons record "
            "it from now on.")


def _profile_figure(profiles: Sequence[pd.DataFrame], column: str, colors: Mapping[str, str],
                    names: Mapping[str, str], title: str, y_title: str) -> go.Figure:
    profiles = [p[np.isfinite(p[column].to_numpy(dtype=float))] for p in profiles]
    profiles = [p for p in profiles if not p.empty]
    if not profiles:
        return _empty(title, "No block gains recorded (record with GradientMonitor(blocks=\"auto\")).")
    fig = go.Figure()
    seen: dict[str, int] = {}
    for p in profiles:
        run, step = p["run"].iloc[0], int(p["step"].iloc[0])
        k = seen[run] = seen.get(run, -1) + 1
        fig.add_trace(go.Scatter(
            x=p["index"], y=p[column], mode="lines+markers", name=f"{plotly_text(names.get(run, run))} · step {step}",
            legendgroup=run, line={"color": colors.get(run, PALETTE[0]), "dash": DASHES[k % len(DASHES)], "width": 2},
            marker={"size": 5}, customdata=np.stack([p["block"], p["branch_share"]], axis=1),
            hovertemplate="block %{customdata[0]}<br>%{y:.3g}<br>branch share %{customdata[1]:.2f}"
                          f"<extra>step {step}</extra>"))
    fig.add_hline(y=1.0, line={"dash": "dot", "color": "#999999"})
    fig.update_layout(title=title, xaxis_title=BLOCK_AXIS, yaxis_title=y_title, hovermode="closest",
                      legend={"orientation": "h", "y": -0.25})
    fig.update_yaxes(type="log", exponentformat="power")
    return fig


def gain_figure(profiles: Sequence[pd.DataFrame], colors: Mapping[str, str], names: Mapping[str, str]) -> go.Figure:
    """Backward gain ‖∂L/∂x‖/‖∂L/∂y‖ per block vs block depth, one line per (run, step), log scale."""
    return _profile_figure(profiles, "gain", colors, names, "Backward gain per block",
                           "gain ‖∂L/∂x‖ / ‖∂L/∂y‖ (log scale; 1 = unchanged)")


def cumulative_figure(profiles: Sequence[pd.DataFrame], colors: Mapping[str, str],
                      names: Mapping[str, str]) -> go.Figure:
    """The product of the gains from the last block back to each block, log scale."""
    return _profile_figure(profiles, "cumulative", colors, names, "Cumulative gain from the last block back",
                           "∏ gains from the last block to this one (log scale)")
