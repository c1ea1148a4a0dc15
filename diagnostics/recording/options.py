"""The monitor's options: one dataclass with commented defaults, checked once before anything is attached."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import MonitorError

#: Step-table columns the monitor writes itself; a metric given to ``step()`` may not reuse these names.
RESERVED_METRICS: frozenset[str] = frozenset({
    "run", "step", "time", "loss", "grad_norm_total", "grad_scale", "nonfinite_forward_layer",
    "nonfinite_backward_layer", "optimizer_step", "activation_stats", "input_nonfinite", "loss_nonfinite",
})


@dataclass(frozen=True)
class MonitorOptions:
    """What a :class:`~diagnostics.recording.GradientMonitor` records, and how often (see its docstring)."""

    every: int = 1                                  # record steps 0, every, 2*every, ...
    first_step: int = 0                             # number of the first step (a resumed training's global step)
    layers: tuple[str, ...] | None = None           # qualified names or fnmatch patterns of rows to keep
    layer_types: tuple[type[nn.Module], ...] | None = None   # module classes of rows to keep
    histogram_every: int = 0                        # log10|g| histograms every this many steps (0: never)
    on_nonfinite: str = "warn"                      # "warn" | "raise" | "ignore"
    kernels: tuple[str, ...] | str | None = None    # conv layers to snapshot: names, "auto" or None
    kernel_every: int = 50                          # snapshot every this many steps
    kernel_max_mb: float = 256.0                    # budget of all snapshots of the run
    flush_every: int | None = None                  # write the store every this many recorded steps (None: 1 s)
    activations: bool = True                        # forward hooks: activation and output-gradient statistics
    weight_norms: bool = True                       # ‖W‖ of every row (one more read of the weights)
    distributed: bool = False                       # combine activation statistics across ranks
    fused: bool = True                              # fused one-pass CPU kernels where they can be used
    blocks: Any = None                              # backward gain per block: None (off), "auto", "same-shape",
                                                    # or block names / patterns / module classes
    eager_every: int = 10                           # compiled models: activation statistics every this many
                                                    # recorded steps, run eagerly (the others stay compiled)
    unit_activity: bool = False                     # per-unit activity of every output (dead_units column)
    unit_window: int = 20                           # ... a unit is dead when inactive this many recordings
    meta: Mapping[str, Any] = field(default_factory=dict)   # extra JSON metadata of the run


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive whole number" if minimum > 0 else "a whole number >= 0"
        raise MonitorError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def make_options(*, every: Any = 1, first_step: Any = 0, layers: Sequence[str] | str | None = None,
                 layer_types: type[nn.Module] | Sequence[type[nn.Module]] | None = None,
                 histogram_every: Any = 0, on_nonfinite: str = "warn",
                 kernels: Sequence[str] | str | None = None, kernel_every: Any = 50,
                 kernel_max_mb: Any = 256.0, flush_every: Any = None, activations: bool = True,
                 weight_norms: bool = True, distributed: Any = False, fused: bool = True,
                 eager_every: Any = 10, blocks: Any = None, unit_activity: bool = False, unit_window: Any = 20,
                 meta: Mapping[str, Any] | None = None) -> MonitorOptions:
    """Check every option and return them as one :class:`MonitorOptions`; raises :class:`MonitorError`."""
    if on_nonfinite not in ("warn", "raise", "ignore"):
        raise MonitorError(f"on_nonfinite must be 'warn', 'raise' or 'ignore', got {on_nonfinite!r}")
    if isinstance(layers, str):
        layers = (layers,)
    if layers is not None and not all(isinstance(p, str) for p in layers):
        raise MonitorError("layers must be a list of layer names or fnmatch patterns, e.g. ['features.*']")
    if isinstance(layer_types, type):
        layer_types = (layer_types,)
    if layer_types is not None and not all(isinstance(t, type) and issubclass(t, nn.Module) for t in layer_types):
        raise MonitorError("layer_types must be nn.Module classes, e.g. (nn.Conv2d, nn.Linear)")
    if isinstance(kernels, (list, tuple)):
        kernels = tuple(kernels)
    elif kernels is not None and kernels != "auto":
        raise MonitorError(f"kernels must be a list of conv layer names, 'auto' or None, got {kernels!r}")
    if not isinstance(kernel_max_mb, numbers.Real) or isinstance(kernel_max_mb, bool) or kernel_max_mb <= 0:
        raise MonitorError(f"kernel_max_mb must be a positive number of megabytes, got {kernel_max_mb!r}")
    if meta is not None and not isinstance(meta, Mapping):
        raise MonitorError(f"meta must be a mapping of JSON values, got {type(meta).__name__}")
    if unit_activity and not activations:
        raise MonitorError("unit_activity=True reads the layers' outputs: it needs activations=True")
    histogram_every = _count("histogram_every", histogram_every, 0)
    if distributed is not False and histogram_every:
        raise MonitorError("histograms are not supported with distributed=... (one rank's output-gradient "
                           "histogram is not the global batch's); use histogram_every=0")
    return MonitorOptions(
        every=_count("every", every, 1), first_step=_count("first_step", first_step, 0), layers=None if layers is None else tuple(layers),
        layer_types=None if layer_types is None else tuple(layer_types),
        histogram_every=histogram_every, on_nonfinite=on_nonfinite, kernels=kernels,
        kernel_every=_count("kernel_every", kernel_every, 1), kernel_max_mb=float(kernel_max_mb),
        flush_every=None if flush_every is None else _count("flush_every", flush_every, 1),
        activations=bool(activations),
        weight_norms=bool(weight_norms), distributed=distributed is not False, fused=bool(fused),
        eager_every=_count("eager_every", eager_every, 1), blocks=blocks, unit_activity=bool(unit_activity),
        unit_window=_count("unit_window", unit_window, 1), meta=dict(meta or {}),
    )


def check_scalar(name: str, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise MonitorError(f"step(): {name} must be a scalar, got a tensor of shape {tuple(value.shape)}; "
                               "pass e.g. loss.mean() or a number")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MonitorError(f"step(): {name} must be a number or a 1-element tensor, got {value!r}")


def run_meta(model: nn.Module, model_type: str, options: MonitorOptions, fused: bool, compiled: bool) -> dict:
    """The run's metadata: what was recorded, how, on what."""
    from . import stats

    params = list(model.parameters())
    return {
        "model": model_type, "parameters": int(sum(p.numel() for p in params)), "layers": 0,
        "every": options.every, "activations": options.activations, "weight_norms": options.weight_norms,
        "reductions": "fused" if fused else "pytorch", "histogram_every": options.histogram_every,
        "hist_edges": stats.HIST_EDGES.tolist(), "torch": torch.__version__,
        "device": str(params[0].device) if params else "cpu", "rows": "leaf+owner",
        "compiled": compiled, "eager_every": options.eager_every if compiled else None,
        "blocks": None if options.blocks is None else str(options.blocks),
        "unit_window": options.unit_window if options.unit_activity else None,
        **options.meta,
    }
