"""Dead units: units whose output was exactly zero on every input of the monitor's recent steps.

With ``GradientMonitor(..., unit_activity=True)`` the layer table holds ``dead_units``: the fraction of a layer's
units (channels of a conv output, the last axis of a linear or attention output) that were exactly zero on every
recorded step of the last ``unit_window`` steps. Such a unit passes no gradient to its weights, so it cannot
recover. Without that column the rule falls back to ``act_zero_frac`` (the fraction of exact zeros among all
output elements) and says so: that fallback sees a layer that is almost all zeros, not half of its units
permanently dead while the other half fire half of the time (an element fraction near 0.75).
"""

from __future__ import annotations

import numpy as np

from .evidence import Evidence, finite_part
from .finding import Finding
from .thresholds import Thresholds

FIX = ("lower the learning rate, initialise with He (Kaiming) and zero biases, or use LeakyReLU/GELU: a unit that "
       "outputs 0 for every input gets no gradient, so nothing can bring it back.")


def _lasting_fraction(values: np.ndarray, threshold: float, t: Thresholds) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: whether ``values`` exceed ``threshold`` on ``persist`` of the last window's recorded steps,
    and the median value there."""
    tail = values[:, -min(t.window, values.shape[1]):]
    recorded = np.isfinite(tail)
    counted = recorded.sum(axis=1)
    above = (np.where(recorded, tail, -np.inf) > threshold).sum(axis=1)
    level = np.array([np.median(row[np.isfinite(row)]) if np.isfinite(row).any() else np.nan for row in tail])
    return (counted > 0) & (above >= t.persist * np.maximum(counted, 1)), level


def dead_units(ev: Evidence, t: Thresholds) -> list[Finding]:
    """One finding listing the layers with too many dead units (worst first)."""
    ev = finite_part(ev)
    if len(ev.steps) == 0:
        return []
    per_unit = ev.has("dead_units")
    stat, threshold = ("dead_units", t.dead_units) if per_unit else ("act_zero_frac", t.dead_zero_frac)
    if not ev.has(stat):
        return []
    dead, level = _lasting_fraction(ev.values(stat), threshold, t)
    rows = sorted(np.flatnonzero(dead), key=lambda i: -level[i])
    if not rows:
        return []
    layers = [ev.layers[i] for i in rows]
    shown = ", ".join(f"'{ev.layers[i]}' ({level[i]:.0%})" for i in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    if per_unit:
        message = (f"Run {ev.name}: dead units: {len(rows)} layer(s) have more than {threshold:.0%} of their units "
                   f"never active over the monitor's unit window: {shown}{more}.")
    else:
        message = (f"Run {ev.name}: dead units: {len(rows)} layer(s) output exact zeros more than {threshold:.0%} "
                   f"of the time over the last {min(t.window, len(ev.steps))} recorded steps: {shown}{more}. "
                   "Judged on the fraction of zero elements because the run has no per-unit statistic; record "
                   "with GradientMonitor(..., unit_activity=True) to also see a minority of units that never fire.")
    whole = bool(np.nanmax(level[rows]) >= 0.99)
    return [Finding("dead_units", "problem" if whole else "warning", message, FIX, ev.run, tuple(layers),
                    (int(ev.steps[max(0, len(ev.steps) - t.window)]), int(ev.steps[-1])),
                    "per_unit" if per_unit else "zero_fraction",
                    {"layers": {ev.layers[i]: float(level[i]) for i in rows}, "statistic": stat,
                     "threshold": threshold})]
