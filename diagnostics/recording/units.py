"""Per-unit activity: the fraction of a layer's units that produced only exact zeros over a window of steps.

An element-wise zero fraction (``act_zero_frac``) cannot tell half of a layer's units dead for good from every
unit being zero half of the time. This statistic can: a *unit* is one index along the unit axis of the layer's
output, and it is *active* in a step when any of its values in the batch is non-zero. ``dead_units`` is the
fraction of units not active in any of the layer's last ``window`` recorded steps.

The unit axis comes from the module that produced the activation:

* channels (axis 1) for convolutions, channel norms, pools, channel dropout and upsampling with 3-5-dim outputs;
* the last axis for linear, attention, embedding, recurrent and layer-norm outputs;
* an element-wise module (ReLU, GELU, Dropout, ...) takes the axis of the module whose output it was given;
  without one (e.g. a ReLU applied to a residual sum), 4- and 5-dim outputs use channels and others the last axis.

Costs one ``ne(0).any(...)`` per hooked output (off by default; ``GradientMonitor(unit_activity=True)``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

CHANNEL_AXIS, LAST_AXIS = 1, -1

_CHANNEL_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd, nn.Dropout2d, nn.Dropout3d, nn.Upsample, nn.PixelShuffle,
)
_LAST_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.MultiheadAttention, nn.Embedding, nn.EmbeddingBag, nn.RNNBase, nn.LayerNorm,
    nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def own_axis(module: nn.Module) -> int | None:
    """The unit axis a module's output has by the module's kind; None for element-wise modules (inherited)."""
    if isinstance(module, _CHANNEL_TYPES):
        return CHANNEL_AXIS
    if isinstance(module, _LAST_TYPES):
        return LAST_AXIS
    return None


def default_axis(x: torch.Tensor) -> int:
    """The unit axis of an output whose producer is unknown: channels of images and volumes, else the last."""
    return CHANNEL_AXIS if x.dim() in (4, 5) else LAST_AXIS


def active_units(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(units,) bool on ``x``'s device: whether each index along ``axis`` has a non-zero value (NaN counts)."""
    if x.dim() == 0:
        return x.ne(0).reshape(1)
    axis = axis % x.dim()
    others = tuple(d for d in range(x.dim()) if d != axis)
    if not others:
        return x.ne(0)
    # max |x| per unit: one reduction without a mask as large as x (several times faster than ne().any());
    # NaN != 0, so a unit with a NaN counts as active.
    return x.abs().amax(dim=others).ne(0)


class UnitActivity:
    """For every layer, the last of its recorded steps in which each unit was active (host state).

    A layer's units are counted by its own recordings: ``r`` is the layer's r-th recorded step with activity.
    Before ``window`` recordings the verdict is withheld (NaN); a change in the number of units starts over.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._last: dict[str, np.ndarray] = {}       # layer -> recording index of each unit's last activity
        self._seen: dict[str, int] = {}              # layer -> recordings so far

    def update(self, layer: str, active: np.ndarray) -> tuple[int, float]:
        """Add one recorded step's activity of ``layer``; returns (units, dead fraction or NaN)."""
        active = np.asarray(active, dtype=bool).reshape(-1)
        last = self._last.get(layer)
        if last is None or last.size != active.size:
            last = self._last[layer] = np.full(active.size, -1, dtype=np.int64)
            self._seen[layer] = 0
        r = self._seen[layer]
        last[active] = r
        self._seen[layer] = r + 1
        return active.size, dead_fraction(last, r, self.window)


def dead_fraction(last: np.ndarray, r: int, window: int) -> float:
    """Fraction of units whose last activity is ``window`` or more recordings before recording ``r``."""
    if r + 1 < window or last.size == 0:
        return math.nan
    return float(np.mean(last <= r - window))


def pooled_masks(calls: list) -> torch.Tensor | None:
    """The activity of a layer over all its counted calls of a step (calls of another unit count are left out)."""
    masks = [c.units for c in calls if getattr(c, "units", None) is not None]
    if not masks:
        return None
    same = [m for m in masks if m.shape == masks[0].shape]
    return same[0] if len(same) == 1 else torch.stack(same).any(dim=0)
