"""Vanishing and exploding gradients across depth, judged on output gradients ‖∂L/∂Y‖.

The ratio at a step is ‖∂L/∂Y‖ of the first weight layer (Linear, Conv, RNN, ...; normalisation layers
excluded) over that of the last one. Output gradients, not weight gradients: ∂L/∂W = Xᵀ·∂L/∂Y, so when the
forward activations X shrink by the same factor the backward gradients grow (Glorot-style init in a saturating
network), the weight-gradient profile is flat while the signal reaching the first layer has vanished. Runs
recorded with ``activations=False`` have no output gradients; they are judged on ‖∂L/∂W‖ and say so.

A condition is lasting when it holds on at least ``persist`` of the steps of some window of ``window`` recorded
steps (the whole run when it is shorter), not on consecutive steps: one noisy step does not reset it. Steps where
the first layer's gradient is exactly zero are left out (no gradient at all is a dead path, not a small one).
"""

from __future__ import annotations

import numpy as np

from .evidence import NORM_TYPES, Evidence, finite_part, median
from .finding import Finding, fmt
from .thresholds import Thresholds

FIXES: dict[str, str] = {
    "vanishing": ("use ReLU-family activations with He (Kaiming) initialisation, add normalisation (BatchNorm, "
                  "LayerNorm) or residual connections, or make the network shallower: each layer multiplies the "
                  "backward signal by about {factor} here, so the first layers barely learn."),
    "exploding": ("initialise with a smaller scale (He/Kaiming for ReLU, Glorot/Xavier for tanh), add "
                  "normalisation or residual connections, and clip the gradient norm "
                  "(torch.nn.utils.clip_grad_norm_): each layer multiplies the backward signal by about {factor}, "
                  "so the first layers take steps far too large for the same learning rate."),
}


def weight_layers(ev: Evidence, stat: str) -> list[int]:
    """Rows of layers with weights (not normalisation) that have ``stat`` recorded, in forward order."""
    has_weights = np.isfinite(ev.values("weight_grad_norm")).any(axis=1) | \
        np.isfinite(ev.values("weight_norm")).any(axis=1)
    values = ev.values(stat)
    return [i for i, t in enumerate(ev.types)
            if t not in NORM_TYPES and has_weights[i] and np.isfinite(values[i]).any()]


def depth_ratio(ev: Evidence) -> tuple[np.ndarray, str, int, int]:
    """The first/last ratio per step (NaN where undefined), the statistic used, and the two rows (-1 if none)."""
    for stat in ("act_grad_norm", "weight_grad_norm"):
        rows = weight_layers(ev, stat)
        if len(rows) >= 2:
            values = ev.values(stat)
            first, last = values[rows[0]], values[rows[-1]]
            ok = np.isfinite(first) & np.isfinite(last) & (first > 0) & (last > 0)
            ratio = np.full(len(ev.steps), np.nan)
            ratio[ok] = first[ok] / last[ok]
            return ratio, stat, rows[0], rows[-1]
    return np.full(len(ev.steps), np.nan), "", -1, -1


def lasting(mask: np.ndarray, defined: np.ndarray, window: int, persist: float) -> tuple[int, int] | None:
    """The last window (start, end index, end exclusive) in which ``mask`` holds on ``persist`` of its steps.

    Windows are ``window`` steps long (the whole series when shorter); only ``defined`` steps count.
    """
    n = len(mask)
    w = min(window, n)
    if w == 0:
        return None
    hits = np.concatenate(([0], np.cumsum(mask & defined)))
    counted = np.concatenate(([0], np.cumsum(defined)))
    for end in range(n, w - 1, -1):
        start = end - w
        total = counted[end] - counted[start]
        if total and total >= 0.5 * w and hits[end] - hits[start] >= persist * total:
            return start, end
    return None


def across_depth(ev: Evidence, t: Thresholds) -> list[Finding]:
    """Vanishing or exploding across depth, lasting over a window of recorded steps."""
    ev = finite_part(ev)
    if len(ev.steps) < t.min_depth_steps:
        return []
    ratio, stat, first, last = depth_ratio(ev)
    if not stat:
        return []
    defined = np.isfinite(ratio)
    found = []
    for kind, mask in (("vanishing", defined & (ratio < t.vanishing_ratio)),
                       ("exploding", defined & (ratio > t.exploding_ratio))):
        window = lasting(mask, defined, t.window, t.persist)
        if window is None:
            continue
        start, end = window
        value = median(ratio[start:end])
        now = lasting(mask[-min(t.window, len(mask)):], defined[-min(t.window, len(mask)):], t.window,
                      t.persist) is not None
        layers = weight_layers(ev, stat)
        factor = fmt(value ** (1 / max(1, len(layers) - 1)))
        steps = (int(ev.steps[start]), int(ev.steps[end - 1]))
        measured = "an output gradient ‖∂L/∂Y‖" if stat == "act_grad_norm" else \
            "a weight gradient ‖∂L/∂W‖ (judged on weight gradients: output gradients were not recorded, " \
            "activations=False)"
        bigger = "smaller" if kind == "vanishing" else "larger"
        times = fmt(1 / value if kind == "vanishing" else value)
        message = (f"Run {ev.name}: {kind} gradients across depth: the first weight layer '{ev.layers[first]}' "
                   f"received {measured} {times}× {bigger} than the last one '{ev.layers[last]}' (median over "
                   f"steps {steps[0]}–{steps[1]}, on {int(mask[start:end].sum())} of {end - start} recorded steps)"
                   + ("." if now else f"; it no longer holds over the last {min(t.window, len(mask))} steps."))
        found.append(Finding(kind, "problem" if now else "warning", message, FIXES[kind].format(factor=factor),
                             ev.run, (ev.layers[first], ev.layers[last]), steps, "depth",
                             {"median_ratio": value, "statistic": stat, "threshold":
                              t.vanishing_ratio if kind == "vanishing" else t.exploding_ratio,
                              "per_layer_factor": float(factor) if factor not in ("inf", "nan") else None}))
    return found
