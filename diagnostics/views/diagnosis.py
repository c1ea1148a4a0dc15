"""Automatic findings: plain-language sentences, with their evidence, about what a run's gradients did."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .matrices import StatMatrix, first_last_ratio


@dataclass
class Thresholds:
    """Where a finding starts. Every value is shown (and adjustable) on the Gradient flow page."""

    vanishing_ratio: float = 1e-3      # first/last layer weight-gradient norm below this is "vanishing"
    exploding_ratio: float = 1e3       # first/last above this is "exploding across depth"
    exploding_norm: float = 1e3        # total gradient norm above this is "exploding"
    window: int = 20                   # ... for at least this many consecutive recorded steps
    dead_fraction: float = 0.9         # a layer whose outputs are zero this often has dead units
    update_low: float = 1e-4           # median update ratio below this: the layer barely moves
    update_high: float = 1e-2          # median update ratio above this: steps too large for the weights


@dataclass
class Finding:
    """One finding: a severity (``error``, ``warning``, ``info``), a sentence, and the numbers behind it."""

    kind: str
    severity: str
    message: str
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """Start and length of the longest run of True in ``mask`` (length 0 if none)."""
    best_start, best_len, start = 0, 0, None
    for i, flag in enumerate(np.append(mask, False)):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start > best_len:
                best_start, best_len = start, i - start
            start = None
    return best_start, best_len


def _fmt(x: float) -> str:
    return f"{x:.2g}" if math.isfinite(x) else str(x)


def vanishing_and_exploding_depth(matrix: StatMatrix, t: Thresholds, who: str = "") -> list[Finding]:
    """Early layers ≪ (or ≫) late layers for a sustained window of steps."""
    first, last, ratio = first_last_ratio(matrix)
    if not first or not np.isfinite(ratio).any():
        return []
    need = min(t.window, len(ratio))
    found = []
    for kind, mask, word in (("vanishing", ratio < t.vanishing_ratio, "smaller"),
                             ("exploding_depth", ratio > t.exploding_ratio, "larger")):
        start, length = _longest_run(mask & np.isfinite(ratio))
        if length >= need and length > 0:
            steps = matrix.steps[start:start + length]
            median = float(np.nanmedian(ratio[start:start + length]))
            found.append(Finding(
                kind, "error" if kind == "vanishing" else "warning",
                f"{'Vanishing' if kind == 'vanishing' else 'Exploding'} gradients across depth in run "
                f"{who or matrix.run}: the first layer '{first}' received a {matrix.stat} {_fmt(1 / median if word == 'smaller' else median)}× "
                f"{word} than the last layer '{last}' for {length} recorded steps (steps {steps[0]}–{steps[-1]}).",
                {"run": matrix.run, "first_layer": first, "last_layer": last, "median_ratio": median,
                 "first_step": int(steps[0]), "last_step": int(steps[-1]), "steps": int(length),
                 "threshold": t.vanishing_ratio if kind == "vanishing" else t.exploding_ratio}))
    return found


def exploding_norm(steps: pd.DataFrame, run: str, t: Thresholds, who: str = "") -> list[Finding]:
    """The total gradient norm above a threshold for a sustained window."""
    if steps.empty or "grad_norm_total" not in steps:
        return []
    norm = steps["grad_norm_total"].to_numpy(dtype=float)
    start, length = _longest_run(norm > t.exploding_norm)
    if length == 0 or length < min(t.window, len(norm)):
        return []
    s = steps["step"].to_numpy()
    peak = float(np.nanmax(norm[start:start + length]))
    return [Finding("exploding", "error",
                    f"Exploding gradients in run {who or run}: the total gradient norm stayed above "
                    f"{_fmt(t.exploding_norm)} for {length} recorded steps (steps {s[start]}–{s[start + length - 1]}), "
                    f"peaking at {_fmt(peak)}.",
                    {"run": run, "first_step": int(s[start]), "steps": int(length), "peak": peak,
                     "threshold": t.exploding_norm})]


def nonfinite(steps: pd.DataFrame, run: str, who: str = "") -> list[Finding]:
    """Where NaN/Inf first appeared, in the forward or the backward pass."""
    found = []
    for column, phase in (("nonfinite_forward_layer", "forward"), ("nonfinite_backward_layer", "backward")):
        if column not in steps:
            continue
        hit = steps[steps[column].fillna("").astype(str) != ""]
        if hit.empty:
            continue
        first = hit.iloc[0]
        found.append(Finding(
            "nonfinite", "error",
            f"Non-finite values (NaN/Inf) in run {who or run}: they first appeared in the {phase} pass at layer "
            f"'{first[column]}' at step {int(first['step'])}, and in {len(hit)} recorded step(s) in all.",
            {"run": run, "phase": phase, "layer": str(first[column]), "step": int(first["step"]),
             "steps_affected": int(len(hit))}))
    return found


def dead_units(zero_frac: StatMatrix, t: Thresholds, who: str = "") -> list[Finding]:
    """Layers whose outputs are exactly zero most of the time over the last window."""
    if zero_frac.empty:
        return []
    tail = zero_frac.values[:, -min(t.window, zero_frac.values.shape[1]):]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # layers with no value at all give NaN, not a warning
        mean = np.nanmean(np.where(np.isfinite(tail), tail, np.nan), axis=1)
    bad = [(zero_frac.layers[i], float(mean[i])) for i in np.flatnonzero(mean > t.dead_fraction)]
    if not bad:
        return []
    bad.sort(key=lambda x: -x[1])
    shown = ", ".join(f"'{n}' ({v:.0%})" for n, v in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return [Finding("dead_units", "warning",
                    f"Dead units in run {who or zero_frac.run}: {len(bad)} layer(s) output exact zeros more than "
                    f"{t.dead_fraction:.0%} of the time over the last {tail.shape[1]} recorded steps: {shown}{more}.",
                    {"run": zero_frac.run, "layers": dict(bad), "threshold": t.dead_fraction})]


def update_ratios(update: StatMatrix, t: Thresholds, who: str = "") -> list[Finding]:
    """Layers whose median update ratio ‖ΔW‖/‖W‖ over the last window is far from ~1e-3."""
    if update.empty or not np.isfinite(update.values).any():
        return []
    tail = update.values[:, -min(t.window, update.values.shape[1]):]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # layers without weights have no update ratio
        median = np.nanmedian(np.where(np.isfinite(tail), tail, np.nan), axis=1)
    found = []
    for kind, mask, words in (("update_small", median < t.update_low, "below"),
                              ("update_large", median > t.update_high, "above")):
        rows = np.flatnonzero(mask & np.isfinite(median))
        if len(rows) == 0:
            continue
        layers = {update.layers[i]: float(median[i]) for i in rows}
        shown = ", ".join(f"'{n}' ({_fmt(v)})" for n, v in list(layers.items())[:5])
        more = f" and {len(layers) - 5} more" if len(layers) > 5 else ""
        limit = t.update_low if words == "below" else t.update_high
        advice = "they barely learn; a larger learning rate may help" if words == "below" else \
            "steps this large can destabilise training; a smaller learning rate may help"
        found.append(Finding(kind, "warning",
                             f"Update ratios in run {who or update.run}: {len(layers)} layer(s) have a median "
                             f"‖ΔW‖/‖W‖ {words} {_fmt(limit)} (healthy is about 1e-3), so {advice}: {shown}{more}.",
                             {"run": update.run, "layers": layers, "threshold": limit}))
    return found


def find_problems(grad: StatMatrix, zero_frac: StatMatrix, update: StatMatrix, steps: pd.DataFrame,
                  thresholds: Thresholds | None = None, name: str | None = None) -> list[Finding]:
    """All findings for one run, most severe first.

    Args:
        grad: ``weight_grad_norm`` of the run (vanishing / exploding across depth).
        zero_frac: ``act_zero_frac`` of the run (dead units).
        update: ``update_ratio`` of the run.
        steps: The run's step frame (total norm, first non-finite layers).
        thresholds: Where findings start (defaults: :class:`Thresholds`).
        name: How the messages name the run (default its id).
    """
    t = thresholds or Thresholds()
    who = f"'{name}'" if name else grad.run
    found = (nonfinite(steps, grad.run, who) + vanishing_and_exploding_depth(grad, t, who)
             + exploding_norm(steps, grad.run, t, who) + dead_units(zero_frac, t, who) + update_ratios(update, t, who))

    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(found, key=lambda f: order.get(f.severity, 3))
