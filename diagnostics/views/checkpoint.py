"""The Checkpoint page's view: recognised checkpoints in, probe runs, their figures and layer checks out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go

from ..checkpoints.architecture import Recognition, conv_kernels, layer_table, weight_summary
from ..checkpoints.loading import Checkpoint
from ..checkpoints.probing import ProbeResult, folder_batch, load_batch_file, probe
from ..errors import DiagnosticsError
from ..store import RunStore
from . import figures
from .matrices import depth_profile, stat_matrix_from_frame

#: Channel pairs drawn per kernel grid (the first ones: a large layer would not fit on the page).
MAX_CHANNELS = 16


@dataclass
class ProbeSettings:
    """The probe's choices on the page."""

    steps: int = 1
    lr: float = 1e-3
    loss: str = "cross_entropy"
    image_size: int = 64                     # for torchvision models, whose input size the weights do not fix
    batch_file: bytes | None = None          # torch.save({"x": inputs, "y": labels}) bytes
    folder: str = ""                         # a folder of images in class sub-folders


@dataclass
class ProbeRuns:
    """The probe of every checkpoint: a result, or the library's reason it could not run, per checkpoint."""

    results: dict[str, ProbeResult] = field(default_factory=dict)
    errors: dict[str, DiagnosticsError] = field(default_factory=dict)


@dataclass
class ProbeView:
    """What the page draws of the probes."""

    depth: go.Figure                                   # gradient vs depth of every checkpoint on one chart
    kernels: dict[str, go.Figure]                      # checkpoint -> ∂L/∂W grid of its first snapshot layer
    checks: dict[str, pd.DataFrame]                    # checkpoint -> manual vs autograd rows (maybe empty)


@dataclass
class WeightsView:
    """What the page shows of a checkpoint whose architecture is unknown: its weights only."""

    summary: pd.DataFrame                              # one row per tensor: shape, norm, mean/max |w|, NaN/Inf
    kernels: dict[str, go.Figure]                      # conv layer -> grid of its weights
    layers: pd.DataFrame | None = None                 # leaf layers of a rebuilt model, else None


def weights_view(ckpt: Checkpoint, rec: Recognition) -> WeightsView:
    """The layers of a rebuilt model, or the weight summary and conv-weight grids of an unknown one."""
    if rec.built is not None:
        return WeightsView(pd.DataFrame(), {}, layer_table(rec.built.model))
    summary = weight_summary(ckpt.state_dict)[["param", "shape", "numel", "norm", "mean_abs", "max_abs", "nonfinite"]]
    grids = {layer: figures.kernel_grid_figure(w[:MAX_CHANNELS, :MAX_CHANNELS],
                                               f"W of {layer} (first {MAX_CHANNELS}×{MAX_CHANNELS} channel pairs)")
             for layer, w in conv_kernels(ckpt.state_dict).items()}
    return WeightsView(summary, grids)


def probe_checkpoints(loaded: Sequence[tuple[Checkpoint, Recognition]], store: RunStore,
                      settings: ProbeSettings) -> ProbeRuns:
    """Record a probe run of every rebuilt checkpoint; one checkpoint's library error never stops the others."""
    runs = ProbeRuns()
    for ckpt, rec in loaded:
        if rec.built is None:
            continue
        built = rec.built
        shape = built.input_shape if built.config else (built.input_shape[0], settings.image_size,
                                                        settings.image_size)
        try:
            batch = (load_batch_file(settings.batch_file) if settings.batch_file is not None
                     else folder_batch(settings.folder.strip(), shape) if settings.folder.strip() else None)
            runs.results[ckpt.source] = probe(built.model, batch, settings.loss, settings.steps, store,
                                              input_shape=shape, lr=settings.lr, run_name=f"checkpoint {ckpt.source}",
                                              meta={"checkpoint": ckpt.source, "architecture": built.architecture})
        except DiagnosticsError as exc:
            runs.errors[ckpt.source] = exc
    return runs


def probe_view(results: dict[str, ProbeResult], store: RunStore) -> ProbeView:
    """Gradient vs depth of every probed checkpoint on one chart, each one's kernels and its layer checks."""
    names = {r.run_id: name for name, r in results.items()}
    colors = figures.run_colors(store.run_ids())        # the same colour per run as on every other page
    profiles = []
    for result in results.values():
        matrix = stat_matrix_from_frame(result.frame, result.run_id, "weight_grad_norm")
        profiles.append(depth_profile(matrix, int(matrix.steps[-1])) if not matrix.empty else pd.DataFrame())
    depth = figures.depth_figure(profiles, "weight_grad_norm", True, colors, names)
    kernels = {}
    for name, result in results.items():
        steps = store.kernel_steps(result.run_id) if result.run_id else []
        if steps:
            snap = store.kernel_snapshot(result.run_id, steps[-1])
            layer = next(iter(snap.arrays))
            kernels[name] = figures.kernel_grid_figure(
                snap.arrays[layer]["grad"][:MAX_CHANNELS, :MAX_CHANNELS],
                f"∂L/∂W of {layer} (first {MAX_CHANNELS}×{MAX_CHANNELS} channel pairs)")
    checks = {name: result.checks for name, result in results.items()}
    return ProbeView(depth, kernels, checks)
