"""Where findings start: one dataclass of thresholds with commented defaults (chosen on the labelled benchmark)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Thresholds:
    """Every value is shown (and adjustable) on the Gradient flow page.

    The defaults were chosen on the training scenarios of ``benchmarks/findings.py`` and checked on its held-out
    scenarios (README, "Findings").
    """

    window: int = 50                # recorded steps a lasting condition is judged over
    persist: float = 0.8            # ... the fraction of them it must hold in (not consecutive steps)
    min_depth_steps: int = 5        # fewer recorded steps: no verdict across depth yet
    min_update_steps: int = 20      # fewer recorded steps: no verdict on update sizes yet (early training)
    vanishing_ratio: float = 1e-3   # ‖∂L/∂Y‖ of the first weight layer over the last one below this: vanishing
    exploding_ratio: float = 1e2    # ... above this: exploding across depth
    divergence_growth: float = 1e3  # total gradient norm this many times its first steps' median: diverged
    loss_growth: float = 1e2        # a positive loss this many times its first steps' median: diverged
    grad_to_weight: float = 1e2     # a layer's ‖∂L/∂W‖ this many times its ‖W‖: exploding
    dead_units: float = 0.25        # fraction of a layer's units that never fired over the monitor's unit window
    dead_zero_frac: float = 0.9     # without the per-unit statistic: fraction of exact zeros in a layer's output
    update_low: float = 1e-4        # median ‖ΔW‖/‖W‖ below this while the loss is not falling: too small
    update_high: float = 1e-1       # ‖ΔW‖/‖W‖ above this ...
    update_high_steps: int = 5      # ... on at least this many recorded steps: too large
    stalled_loss: float = 0.9       # the loss is "not falling" when its recent mean is above this × its first
