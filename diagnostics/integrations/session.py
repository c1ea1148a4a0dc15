"""One monitored training run inside a framework: the options a callback accepts, the micro-batch losses of the
step in progress, the run id shared by every rank, and the one way a run ends.

Both framework callbacks (:mod:`.lightning`, :mod:`.huggingface`) hold a :class:`Session` between the
framework's "training starts" and "training ends" events; this module imports no framework.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from ..errors import MonitorError
from ..recording import GradientMonitor
from ..recording.options import make_options
from ..store import RunStore

#: GradientMonitor options a callback passes through unchanged (see GradientMonitor's docstring).
MONITOR_OPTIONS: frozenset[str] = frozenset({
    "every", "layers", "layer_types", "histogram_every", "on_nonfinite", "kernels", "kernel_every",
    "kernel_max_mb", "meta", "flush_every", "activations", "weight_norms", "fused",
})

#: GradientMonitor arguments the callback takes from the framework itself, with the reason.
FRAMEWORK_ARGUMENTS: Mapping[str, str] = {
    "model": "the model is the one the trainer trains",
    "optimizer": "the optimizer is the trainer's",
    "scaler": "the AMP scaler is the trainer's",
    "first_step": "steps are numbered by the trainer's global step",
    "distributed": "distributed recording follows the trainer's strategy",
}


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The GradientMonitor options given to a callback, checked now (before any training starts).

    Raises:
        MonitorError: an option the monitor does not have, or one the trainer decides, or a bad value.
    """
    for key in options:
        if key in FRAMEWORK_ARGUMENTS:
            raise MonitorError(f"GradientFlowCallback does not take {key}=: {FRAMEWORK_ARGUMENTS[key]}")
        if key not in MONITOR_OPTIONS:
            raise MonitorError(f"GradientFlowCallback got an unknown option {key}=; GradientMonitor options are "
                               f"{sorted(MONITOR_OPTIONS)}")
    make_options(**options)
    return dict(options)


def missing(package: str, install: str) -> ImportError:
    """The ImportError of an integration whose framework is not installed."""
    return ImportError(f"this integration needs {package}, which is not installed: pip install {install}")


def learning_rates(optimizer: Any) -> dict[str, float]:
    """``lr`` of the first parameter group, and ``lr_group{i}`` of every group when there are several."""
    rates = [float(g["lr"]) for g in getattr(optimizer, "param_groups", None) or []
             if isinstance(g.get("lr"), (numbers.Real, torch.Tensor))]
    if len(rates) <= 1:
        return {"lr": rates[0]} if rates else {}
    return {"lr": rates[0], **{f"lr_group{i}": rate for i, rate in enumerate(rates)}}


class Session:
    """A :class:`GradientMonitor` attached for one training, and the losses of the step in progress.

    Args:
        monitor: The monitor, not yet attached.
        broadcast: Makes rank 0's run id every rank's (``None`` for one process).
    """

    def __init__(self, monitor: GradientMonitor, broadcast: Callable[[str | None], str | None] | None) -> None:
        self.monitor = monitor
        monitor.attach()
        self.run_id = monitor.run_id if broadcast is None else broadcast(monitor.run_id)
        self._losses: list[torch.Tensor] = []      # this step's micro-batch losses, as given by the framework
        self.backwards = 0                         # micro-batches with a backward since the last step

    def add_loss(self, loss: Any) -> None:
        """One micro-batch's loss (kept on its device: no host sync per micro-batch)."""
        self.backwards += 1
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss.detach().reshape(()).float())

    def step_loss(self, scale: float = 1.0) -> torch.Tensor | None:
        """``scale`` times the sum of this step's micro-batch losses (None when none was seen); then resets."""
        losses, self._losses, self.backwards = self._losses, [], 0
        if not losses:
            return None
        return torch.stack([x.to(losses[0].device) for x in losses]).sum() * scale

    def close(self, status: str, error: str | None = None) -> None:
        """Remove every hook and mark the run (idempotent through the callbacks, which drop the session)."""
        self.monitor.detach(status=status, error=error)


def describe(exc: BaseException) -> str:
    """How an exception is written into a crashed run's metadata."""
    return f"{type(exc).__name__}: {exc}"


def store_for_rank(store: RunStore | str | os.PathLike[str] | None, rank: int) -> RunStore | str | None:
    """Rank 0 writes the run; every other rank records the same steps without a store."""
    return store if rank == 0 else None
