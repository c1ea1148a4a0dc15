"""The Checkpoint page's view: recognised checkpoints in, probe runs, their figures and layer checks out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    loss: str = "auto"                       # "auto": the model's own ("model_loss" for transformers), or a LOSSES name
    image_size: int = 64                     # for CNNs, whose input size the weights do not fix
    batch_file: bytes | None = None          # a batch file (see probing.load_batch_file), as bytes
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


def probe_checkpoints(loaded: Sequence[tuple[Checkpoint, Recognition]], store: RunStore, settings: ProbeSettings,
                      progress: Callable[[int, int, str], None] | None = None) -> ProbeRuns:
    """Record a probe run of every rebuilt checkpoint; one checkpoint's library error never stops the others.

    Each model gets the batch file or image folder when one is given, else the synthetic batch that fits it
    (token ids or pixel values for transformers, the archive's input shapes for ``torch.export`` programs,
    ``settings.image_size`` images for CNNs whose weights do not fix it), flagged as synthetic.
    ``progress(done, total, name)`` is called before each probe and once at the end.
    """
    runs = ProbeRuns()
    buildable = [(ckpt, rec) for ckpt, rec in loaded if rec.built is not None]
    for i, (ckpt, rec) in enumerate(buildable):
        if progress:
            progress(i, len(buildable), ckpt.source)
        built = rec.built
        fixed = built.config or built.fixed_size or len(built.input_shape) != 3
        shape = built.input_shape if fixed else (built.input_shape[0], settings.image_size, settings.image_size)
        try:
            if settings.batch_file is not None:
                batch = load_batch_file(settings.batch_file)
            elif settings.folder.strip():
                batch = folder_batch(settings.folder.strip(), shape)
            else:
                batch = built.make_batch(4, 0) if built.make_batch else None
            loss = built.loss if settings.loss == "auto" else settings.loss
            runs.results[ckpt.source] = probe(built.model, batch, loss, settings.steps, store,
                                              input_shape=shape or None, lr=settings.lr,
                                              run_name=f"checkpoint {ckpt.source}",
                                              check=built.family != "torch.export",
                                              meta={"checkpoint": ckpt.source, "architecture": built.architecture})
        except DiagnosticsError as exc:
            runs.errors[ckpt.source] = exc
    if progress:
        progress(len(buildable), len(buildable), "")
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
