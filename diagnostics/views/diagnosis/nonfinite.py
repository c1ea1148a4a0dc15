"""Non-finite values: one finding per run, the origin first (input batch, loss or layer), its consequences after.

The monitor records, per step, whether the batch given to the model (``input_nonfinite``) or the loss
(``loss_nonfinite``) was non-finite, and the first layer whose forward output or output gradient was
(``nonfinite_forward_layer`` / ``nonfinite_backward_layer``). At the first bad step the origin is, in this order:
the input batch, a layer's forward output, the loss (all layers finite), a layer's backward pass (forward and loss
finite: a function between that layer and the loss has an infinite derivative, e.g. log or sqrt at 0). Everything
at later steps is a consequence, reported after the origin.
"""

from __future__ import annotations

import numpy as np

from .evidence import Evidence, bad_steps, skipped_by_scaler
from .finding import Finding, fmt
from .thresholds import Thresholds

#: Origin -> (what happened, what to do and why).
ORIGINS: dict[str, tuple[str, str]] = {
    "input": ("the input batch given to the model held NaN/Inf",
              "check the data pipeline (e.g. assert torch.isfinite(x).all() before the model; drop or impute "
              "missing values): one non-finite input makes the loss, every gradient and, after the optimizer "
              "step, every weight NaN."),
    "forward": ("the output of layer {layer} in the forward pass was non-finite",
                "look at what layer {layer} computes on its input (a division, log, sqrt or exp that overflows; in "
                "mixed precision run it in float32): NaN from one layer reaches the loss and every gradient."),
    "loss": ("the loss was non-finite while every layer's output was finite",
             "compute the loss from logits with F.cross_entropy or F.log_softmax instead of log(softmax(...)), or "
             "clamp the argument of log/sqrt/division (x.clamp_min(eps)): the model was finite, the loss function "
             "turned it into Inf/NaN."),
    "backward": ("the output gradient of layer {layer} was non-finite while the forward pass and the loss were "
                 "finite",
                 "a function between layer {layer} and the loss has an infinite derivative at the values it saw "
                 "(log or sqrt of 0, x**p with p < 1 at 0, 1/x): use a stable form (F.log_softmax, "
                 "x.clamp_min(eps)), because its derivative multiplies every gradient behind it."),
    "overflow": ("the total gradient norm overflowed to Inf",
                 "see the exploding finding: the gradients grew until they overflowed, and NaN followed."),
}


def origin(ev: Evidence, index: int) -> tuple[str, str]:
    """The origin of the first bad step (a key of :data:`ORIGINS`) and the layer concerned ("" if none)."""
    forward = str(ev.text_column("nonfinite_forward_layer")[index])
    backward = str(ev.text_column("nonfinite_backward_layer")[index])
    if np.nan_to_num(ev.column("input_nonfinite")[index], nan=0.0) > 0:
        return "input", forward
    if forward:
        return "forward", forward
    loss = ev.column("loss")[index]
    loss_bad = np.nan_to_num(ev.column("loss_nonfinite")[index], nan=0.0) > 0 or np.isinf(loss) or (
        np.isnan(loss) and np.isfinite(ev.column("loss")).any())
    if loss_bad:
        return "loss", ""
    if backward:
        return "backward", backward
    if np.isinf(ev.column("grad_norm_total")[index]):
        return "overflow", ""
    return "backward", backward


def nonfinite(ev: Evidence, t: Thresholds) -> list[Finding]:
    """One finding: where NaN/Inf first appeared and what it did afterwards."""
    bad = bad_steps(ev)
    if not bad.any():
        return []
    index = int(np.flatnonzero(bad)[0])
    step = int(ev.steps[index])
    where, layer = origin(ev, index)
    what, fix = (s.format(layer=f"'{layer}'") for s in ORIGINS[where])
    later = ev.steps[index:]
    count = int(bad[index:].sum())
    layers = [str(x) for x in dict.fromkeys([*ev.text_column("nonfinite_forward_layer")[index:],
                                               *ev.text_column("nonfinite_backward_layer")[index:]]) if x]
    recovered = not bad[-1]
    after = (f" Consequences: {count} of the {len(later)} recorded steps from there on were "
             f"non-finite" + (f"; non-finite outputs or gradients in {len(layers)} layer(s)" if layers else "")
             + ("; the run recovered by its last step." if recovered else
                "; it never recovered (the weights themselves became non-finite)."))
    if skipped_by_scaler(ev, bad):
        scale = ev.column("grad_scale")
        return [Finding("nonfinite", "info",
                        f"Run {ev.name}: {count} recorded step(s) had Inf/NaN gradients, first at step {step}, "
                        f"and the gradient scaler (scale up to {fmt(float(np.nanmax(scale)))}) skipped them.",
                        "nothing, if this stays rare: mixed-precision loss scaling probes for the largest safe "
                        "scale and skips the steps that overflow.", ev.run, tuple(layers), (step, int(later[-1])),
                        "scaler", {"first_step": step, "bad_steps": count})]
    return [Finding("nonfinite", "problem" if not recovered else "warning",
                    f"Run {ev.name}: NaN/Inf first appeared at step {step}: {what}.{after}", fix, ev.run,
                    tuple(([layer] if layer else []) + [x for x in layers if x != layer]),
                    (step, int(later[-1])), where,
                    {"first_step": step, "origin": where, "layer": layer, "bad_steps": count,
                     "steps_after": int(len(later)), "recovered": recovered})]
