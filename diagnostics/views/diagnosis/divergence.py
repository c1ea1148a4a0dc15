"""Exploding gradients in the total norm, judged against the run's own history.

Four signs, each at its first step: **divergence** (the total gradient norm grew ``divergence_growth`` times
above the median of the run's first five finite steps), **loss** (a positive loss rose ``loss_growth`` times
above its first steps: a run that learns never does that), **overflow** (the norm became +Inf before anything became
NaN, and neither the input nor the loss was the origin), and **level** (some layer's weight gradient was
``grad_to_weight`` times the norm of its weights, ‖∂L/∂W‖/‖W‖, on ``persist`` of a window of steps or on the last
step before the run turned non-finite: with any usual learning rate one step then moves the weights by many times
their size). All four are scale-free: a loss of 1e4 with gradients of 1e4 is no finding by itself.
"""

from __future__ import annotations

import numpy as np

from .depth import lasting, weight_layers
from .evidence import Evidence, first_bad_index, median
from .finding import Finding, fmt
from .nonfinite import origin
from .thresholds import Thresholds

FIX = ("lower the learning rate (e.g. 10×) or add warmup, and clip the gradient norm "
       "(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)); for recurrent networks also initialise the "
       "recurrent weights with a spectral radius at most 1: each step then cannot grow the gradient further, and "
       "one large gradient cannot throw the weights out of range.")

BASELINE_STEPS = 5
#: The loss's start is the median of its first three finite values (a divergence can begin at the fourth step).
LOSS_BASELINE_STEPS = 3


def total_norm(ev: Evidence, t: Thresholds) -> list[Finding]:
    """At most one finding: the first sign of a total-norm explosion, with the others as evidence."""
    norm = ev.column("grad_norm_total")
    loss = ev.column("loss")
    bad = first_bad_index(ev)
    end = len(ev.steps) if bad is None else bad
    finite = np.flatnonzero(np.isfinite(norm[:end]) & (norm[:end] > 0))
    signs: dict[str, int] = {}
    base = median(norm[finite[:BASELINE_STEPS]]) if len(finite) else float("nan")
    if np.isfinite(base) and base > 0:
        grown = np.flatnonzero(np.isfinite(norm[:end]) & (norm[:end] >= t.divergence_growth * base))
        if len(grown):
            signs["divergence"] = int(grown[0])
    if bad is not None and np.isposinf(norm[bad]) and origin(ev, bad)[0] not in ("input", "loss"):
        signs["overflow"] = bad
    first_losses = loss[:end][np.isfinite(loss[:end])][:LOSS_BASELINE_STEPS]
    start_loss = median(first_losses) if len(first_losses) else float("nan")
    if np.isfinite(start_loss) and start_loss > 0:
        risen = np.flatnonzero(np.isfinite(loss[:end]) & (loss[:end] >= t.loss_growth * start_loss))
        if len(risen):
            signs["loss"] = int(risen[0])
    relative = _relative_gradient(ev)
    high = np.isfinite(relative[:end]) & (relative[:end] >= t.grad_to_weight)
    window = lasting(high, np.isfinite(relative[:end]), t.window, t.persist)
    if window is not None:
        signs["level"] = window[0] + int(np.argmax(high[window[0]:window[1]]))
    elif bad is not None and end > 0 and high[end - 1]:
        signs["level"] = end - 1
    if not signs:
        return []
    detail, index = min(signs.items(), key=lambda kv: kv[1])
    step = int(ev.steps[index])
    peak = float(np.nanmax(np.where(np.isfinite(norm[:end]), norm[:end], np.nan))) if end and \
        np.isfinite(norm[:end]).any() else float("nan")
    what = {
        "divergence": f"the total gradient norm grew from {fmt(base)} (its first steps) to {fmt(norm[index])} at "
                      f"step {step}, {fmt(norm[index] / base)}× — the run diverged at step {step}",
        "overflow": f"the total gradient norm overflowed to Inf at step {step} before any NaN appeared",
        "loss": f"the loss rose from {fmt(start_loss)} to {fmt(loss[index])} at step {step}, "
                f"{fmt(loss[index] / start_loss)}× — the run diverged at step {step}",
        "level": f"a layer's weight gradient was {fmt(relative[index])}× its weights' own norm at step {step} "
                 f"(‖∂L/∂W‖/‖W‖; about 0.01–1 in healthy runs), so any usual learning rate throws the weights out "
                 f"of range",
    }[detail]
    tail = "" if bad is None else f"; the run turned non-finite at step {int(ev.steps[bad])}"
    return [Finding("exploding", "problem", f"Run {ev.name}: exploding gradients: {what} (peak {fmt(peak)}){tail}.",
                    FIX, ev.run, (), (step, int(ev.steps[end - 1 if end else 0])), detail,
                    {"signs": {k: int(ev.steps[v]) for k, v in signs.items()}, "baseline_norm": base,
                     "peak_norm": peak, "peak_relative_gradient": float(np.nanmax(relative[:end]))
                     if np.isfinite(relative[:end]).any() else None})]


def _relative_gradient(ev: Evidence) -> np.ndarray:
    """Per step, the largest ‖∂L/∂W‖/‖W‖ over weight layers (NaN where none is defined).

    Layers whose weights start at zero (a zero-initialised embedding) are left out: their ratio is unbounded by
    design at first.
    """
    rows = weight_layers(ev, "weight_norm")
    grad, norm = ev.values("weight_grad_norm")[rows], ev.values("weight_norm")[rows]   # (R, S)
    started = np.array([row[np.isfinite(row)][0] > 0 if np.isfinite(row).any() else False for row in norm],
                       dtype=bool)
    ok = np.isfinite(grad) & np.isfinite(norm) & (norm > 0) & started[:, None]
    ratio = np.where(ok, grad / np.where(ok, norm, 1.0), -np.inf)
    out = ratio.max(axis=0) if len(rows) else np.full(len(ev.steps), -np.inf)
    return np.where(np.isfinite(out), out, np.nan)
