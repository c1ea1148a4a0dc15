"""Comparisons read back from the store: runs, curves, first/last gradient ratios, a plain-language reading."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import StoreError
from .models import VARIANTS
from ..store import RunStore

#: Layer types that count as conv layers for the first/last ratio.
CONV_TYPES: tuple[str, ...] = ("Conv1d", "Conv2d")
#: The first/last ratio band in which gradient flow counts as healthy.
HEALTHY_BAND: tuple[float, float] = (0.01, 100.0)
#: Steps averaged for the final loss.
FINAL_WINDOW = 10


def comparisons(store: RunStore) -> pd.DataFrame:
    """One row per comparison in the store (newest first): group, created, variants, runs, depth, dataset.

    A comparison is the set of runs whose metadata share a ``group`` id (written by :func:`diagnostics.compare`).
    """
    rows = []
    for run in store.run_ids():
        meta = store.meta(run)
        if meta.get("kind") != "comparison" or not meta.get("group"):
            continue
        rows.append({"group": meta["group"], "run": run, "variant": meta.get("variant", ""),
                     "created": meta.get("created", 0.0), "status": meta.get("status", ""),
                     "depth": (meta.get("config") or {}).get("depth"),
                     "dataset": (meta.get("dataset") or {}).get("name", ""),
                     "steps": (meta.get("train") or {}).get("steps")})
    columns = ["group", "created", "variants", "runs", "depth", "dataset", "steps", "status"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    grouped = frame.groupby("group", sort=False).agg(
        created=("created", "min"), variants=("variant", lambda v: ", ".join(v)), runs=("run", "count"),
        depth=("depth", "first"), dataset=("dataset", "first"), steps=("steps", "first"),
        status=("status", lambda s: "finished" if (s == "finished").all() else ", ".join(sorted(set(s)))),
    ).reset_index()
    grouped["created"] = pd.to_datetime(grouped["created"], unit="s", utc=True)
    return grouped.sort_values("created", ascending=False, kind="stable").reset_index(drop=True)[columns]


def comparison_runs(store: RunStore, group: str) -> dict[str, str]:
    """``{variant: run_id}`` of one comparison, in the standard variant order."""
    found = {}
    for run in store.run_ids():
        meta = store.meta(run)
        if meta.get("group") == group and meta.get("kind") == "comparison":
            found[meta.get("variant", run)] = run
    if not found:
        raise StoreError(f"no comparison {group!r} in {store.root}; comparisons() lists them")
    order = [v for v in VARIANTS if v in found] + sorted(v for v in found if v not in VARIANTS)
    return {v: found[v] for v in order}


@dataclass
class ComparisonData:
    """Everything the comparison plots and summary need, one ``variant`` column per frame.

    Attributes:
        runs: ``{variant: run_id}``.
        steps: One row per (variant, step): loss, accuracy (held-out, NaN between evaluations),
            train_accuracy, grad_norm_total, nonfinite layers.
        layers: One row per (variant, step, conv layer): ``conv_index`` (1 = first conv in execution order),
            weight_grad_norm, act_grad_norm, update_ratio.
        meta: ``{variant: run metadata}``.
    """

    runs: dict[str, str]
    steps: pd.DataFrame
    layers: pd.DataFrame
    meta: dict[str, dict]


def load_comparison(store: RunStore, runs: Mapping[str, str]) -> ComparisonData:
    """Read the runs of a comparison (``{variant: run_id}``, e.g. from :func:`comparison_runs`)."""
    steps, layers, metas = [], [], {}
    for variant, run in runs.items():
        metas[variant] = store.meta(run)
        s = store.step_frame(run)
        s.insert(0, "variant", variant)
        steps.append(s)
        f = store.frame(run, columns=["type", "depth", "weight_grad_norm", "act_grad_norm", "update_ratio"],
                        join_steps=False)
        f = f[f["type"].isin(CONV_TYPES)].copy()
        rank = {d: i + 1 for i, d in enumerate(sorted(f["depth"].unique()))}
        f["conv_index"] = f["depth"].map(rank).astype(int)
        f.insert(0, "variant", variant)
        layers.append(f)
    return ComparisonData(dict(runs), pd.concat(steps, ignore_index=True) if steps else pd.DataFrame(),
                          pd.concat(layers, ignore_index=True) if layers else pd.DataFrame(), metas)


def first_last_ratio(layers: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, step): ‖∂L/∂W‖ of the first conv layer, of the last one, and first/last.

    Args:
        layers: :attr:`ComparisonData.layers` (conv layers with ``conv_index``).

    Returns:
        Columns ``variant, step, first, last, ratio`` (ratio NaN where either norm is missing or zero).
    """
    if layers.empty:
        return pd.DataFrame(columns=["variant", "step", "first", "last", "ratio"])
    out = []
    for variant, f in layers.groupby("variant", sort=False):
        top = f["conv_index"].max()
        first = f[f["conv_index"] == 1].set_index("step")["weight_grad_norm"]
        last = f[f["conv_index"] == top].set_index("step")["weight_grad_norm"]
        joined = pd.DataFrame({"first": first, "last": last}).reset_index()
        ratio = joined["first"] / joined["last"].where(joined["last"] > 0)
        joined["ratio"] = ratio.where(np.isfinite(ratio))
        joined.insert(0, "variant", variant)
        out.append(joined)
    return pd.concat(out, ignore_index=True)[["variant", "step", "first", "last", "ratio"]]


def summarize(data: ComparisonData) -> pd.DataFrame:
    """One row per variant: final loss (mean of the last steps), held-out accuracy, first/last ratio, divergence.

    Columns: ``variant, run, steps, final_loss, accuracy, ratio_median, ratio_final, diverged_step,
    diverged_layer``. ``ratio_median`` is the median of first/last over all recorded steps.
    """
    ratios = first_last_ratio(data.layers)
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
        ratio, acc, name = row.ratio_median, row.accuracy, f"**{row.variant}**"
        if pd.notna(row.diverged_step):
            where = f" (first NaN/Inf in layer {row.diverged_layer})" if pd.notna(row.diverged_layer) else ""
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
        sentences.append(f"Best held-out accuracy: **{best['variant']}** ({_pct(best['accuracy'])}).")
    return " ".join(sentences)
