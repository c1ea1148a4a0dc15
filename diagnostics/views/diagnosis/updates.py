"""Update sizes ‖ΔW‖/‖W‖ per weight layer, with exact zeros told apart.

A weight that does not move is, in this order: **frozen** (no gradient: ``requires_grad=False``), **not in the
optimizer** (gradient, but the monitor's ``in_optimizer`` is false), **without gradient** (its gradient is exactly
zero: a dead path, reported by the dead-unit and depth rules), or a **lost update** (in the optimizer, a non-zero
gradient large enough to move them (‖∂L/∂W‖/‖W‖ ≥ 1e-3), and still ΔW = 0 exactly: ``zero_grad()`` between
``backward()`` and ``step()``, or a learning rate of 0); a smaller gradient can round away in float32 and counts as
a tiny update. The first two are notes; a lost update is a problem.

Sizes are judged only on layers that move, never on normalisation weights (their scales move 1e-5–1e-4 of their
norm in healthy runs), and only once the run has ``min_update_steps`` recorded steps. Both are learning-rate
verdicts, so each needs at least half of those layers (one layer of a deep stack alone is no verdict). "Too small"
also needs a loss that is not falling, so a converged run is not told to raise its learning rate.
"""

from __future__ import annotations

import numpy as np

from .depth import weight_layers
from .evidence import Evidence, finite_part, median
from .finding import Finding, fmt, names
from .thresholds import Thresholds

FIXES: dict[str, str] = {
    "lost_update": ("call optimizer.zero_grad() before backward() or after step(), never between them, and check "
                    "the learning rate of these parameters' group: the optimizer holds them and they have a "
                    "gradient, so only the update itself was lost."),
    "update_small": ("raise the learning rate (try 10×) or check the schedule: with steps this small the "
                     "weights hardly change, and the loss is not falling either."),
    "update_large": ("lower the learning rate (try 10× lower) or add warmup: a step that changes a weight by more "
                     "than {high:.0%} of its size overshoots, and can kill ReLU units or diverge."),
}


def _rows(ev: Evidence) -> list[int]:
    """Layers with weights, normalisation excluded, in forward order."""
    return weight_layers(ev, "weight_norm") or weight_layers(ev, "weight_grad_norm")


def update_sizes(ev: Evidence, t: Thresholds) -> list[Finding]:
    """Frozen / not-in-optimizer notes, lost updates, and too small or too large updates."""
    recorded = len(ev.steps)
    ev = finite_part(ev)
    rows = _rows(ev)
    if not rows or not ev.has("update_ratio") and not ev.has("in_optimizer"):
        return []
    n = len(ev.steps)
    if n < t.min_update_steps < recorded:
        return []                          # the run turned non-finite early: that finding says why
    if n < t.min_update_steps:
        return [Finding("no_verdict", "info",
                        f"Run {ev.name}: no verdict on update sizes yet: {n} of the {t.min_update_steps} recorded "
                        "steps needed (the first steps of training move weights differently from later ones).",
                        "wait for more steps.", ev.run, (), (int(ev.steps[0]), int(ev.steps[-1])) if n else None,
                        "updates", {"steps": n, "needed": t.min_update_steps})]
    w = min(t.window, n)
    grad = ev.values("weight_grad_norm")[:, -w:]
    update = ev.values("update_ratio")[:, -w:]
    held = ev.values("in_optimizer")[:, -w:]
    with np.errstate(divide="ignore", invalid="ignore"):
        movable = grad / ev.values("weight_norm")[:, -w:] >= MOVABLE      # a gradient no lr could round away
    steps = (int(ev.steps[-w]), int(ev.steps[-1]))
    share = t.persist * w
    groups: dict[str, list[int]] = {"frozen": [], "not_in_optimizer": [], "lost_update": [], "learning": []}
    for i in rows:
        has_grad = np.isfinite(grad[i])
        if has_grad.sum() < share:
            groups["frozen"].append(i)
        elif ((held[i] == 0) & has_grad).sum() >= share:
            groups["not_in_optimizer"].append(i)
        elif ((held[i] != 0) & movable[i] & (update[i] == 0)).sum() >= share:
            groups["lost_update"].append(i)
        elif ((grad[i] > 0) & (update[i] >= 0)).sum() >= share:
            groups["learning"].append(i)
    found = _not_updated(ev, groups, steps)
    learning = groups["learning"]
    level = np.array([median(update[i]) for i in learning], dtype=float)
    small = [learning[k] for k in np.flatnonzero(level < t.update_low)]
    loss = ev.column("loss")
    first, recent = median(loss[:5]), median(loss[-w:])
    stalled = np.isfinite(first) and np.isfinite(recent) and recent >= t.stalled_loss * first
    if learning and small and len(small) * 2 >= len(learning) and stalled:
        shown = ", ".join(f"'{ev.layers[i]}' ({fmt(level[learning.index(i)])})" for i in small[:5])
        found.append(Finding(
            "update_small", "warning",
            f"Run {ev.name}: updates too small: {len(small)} of {len(learning)} learning layer(s) have a median "
            f"‖ΔW‖/‖W‖ below {fmt(t.update_low)} over steps {steps[0]}–{steps[1]} (about 1e-3 is usual), and the "
            f"loss is not falling ({fmt(first)} at the start, {fmt(recent)} now): {shown}.",
            FIXES["update_small"], ev.run, tuple(ev.layers[i] for i in small), steps, "small",
            {"layers": {ev.layers[i]: float(level[learning.index(i)]) for i in small}, "threshold": t.update_low}))
    moving = [i for i in rows if not any(i in groups[g] for g in _STILL)]
    large, count = _large(ev, moving, t)
    if large and len(large) * 2 >= len(moving):
        peak = {i: float(np.nanmax(ev.values("update_ratio")[i])) for i in large}
        shown = ", ".join(f"'{ev.layers[i]}' ({count[i]} steps, up to {fmt(peak[i])})" for i in large[:5])
        found.append(Finding(
            "update_large", "warning",
            f"Run {ev.name}: updates too large: {len(large)} of {len(moving)} layer(s) changed their weights by "
            f"more than {t.update_high:.0%} of their norm (‖ΔW‖/‖W‖ > {fmt(t.update_high)}) on {t.update_high_steps} or more "
            f"recorded steps: {shown}.", FIXES["update_large"].format(high=t.update_high), ev.run,
            tuple(ev.layers[i] for i in large), (int(ev.steps[0]), int(ev.steps[-1])), "large",
            {"layers": {ev.layers[i]: count[i] for i in large}, "threshold": t.update_high}))
    return found


#: ‖∂L/∂W‖/‖W‖ from which ΔW = 0 means the update was lost: below it, lr·∂L/∂W can round away in float32
#: (relative resolution ~6e-8) for learning rates down to 1e-4, as in a deep network whose gradient vanished.
MOVABLE = 1e-3

#: Groups of layers whose weights do not move: judged by no size rule.
_STILL = ("frozen", "not_in_optimizer", "lost_update")


def _large(ev: Evidence, rows: list[int], t: Thresholds) -> tuple[list[int], dict[int, int]]:
    """Layers whose update ratio exceeded ``update_high`` on ``update_high_steps`` steps, and those counts.

    A parameter that started near zero (a zero-initialised positional embedding or LoRA B matrix) grows by a large
    fraction of its tiny norm at first, as intended: its steps count only once its norm reached half its median.
    """
    update, norm = ev.values("update_ratio"), ev.values("weight_norm")
    count = {}
    for i in rows:
        level, known = median(norm[i]), norm[i][np.isfinite(norm[i])]
        from_zero = known.size > 0 and known[0] <= 1e-3 * level
        settled = ~np.isfinite(norm[i]) | (norm[i] >= 0.5 * level) if from_zero else np.ones(len(norm[i]), bool)
        count[i] = int(((update[i] > t.update_high) & settled).sum())
    return [i for i in rows if count[i] >= t.update_high_steps], count


def _not_updated(ev: Evidence, groups: dict[str, list[int]], steps: tuple[int, int]) -> list[Finding]:
    """Frozen and left-out layers as notes; lost updates as a problem."""
    found = []
    texts = {
        "frozen": ("info", "received no gradient (frozen: requires_grad=False, or not on the path to the loss)",
                   "nothing if this is deliberate (fine-tuning); otherwise set requires_grad=True on its "
                   "parameters, because a frozen layer never changes."),
        "not_in_optimizer": ("info", "had gradients, but the optimizer does not hold their parameters",
                             "nothing if this is deliberate; otherwise pass these parameters to the optimizer, "
                             "because the gradient is computed but never applied."),
        "lost_update": ("problem", "are in the optimizer and had non-zero gradients, yet their weights did not "
                        "change at all (ΔW = 0)", FIXES["lost_update"]),
    }
    for detail, (severity, what, fix) in texts.items():
        rows = groups[detail]
        if rows:
            layers = [ev.layers[i] for i in rows]
            found.append(Finding("not_updated", severity,
                                 f"Run {ev.name}: not updated: {len(rows)} weight layer(s) {what} over steps "
                                 f"{steps[0]}–{steps[1]}: {names(layers)}.", fix, ev.run, tuple(layers), steps,
                                 detail, {"layers": layers}))
    return found
