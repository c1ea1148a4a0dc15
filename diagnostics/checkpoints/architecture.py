"""Rebuild the model a checkpoint's weights belong to: the project's CNNs, torchvision and timm classifiers,
Hugging Face models and ``torch.export`` programs."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import CheckpointError, ModelConfigError
from ..experiments.models import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CNN, CNNConfig, build_cnn
from .budget import budget_bytes, megabytes, over_budget
from .loading import DEFAULT_MAX_BYTES, Checkpoint, read_source, safe_torch_load

#: torchvision classification families recognised from key names and shapes, with the keys that mark them.
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # family: (names to try, key prefixes that must all be present)
    "resnet": (("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
                "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"),
               ("layer1.0.conv1.weight", "fc.weight")),
    "vgg": (("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"),
            ("features.0.weight", "classifier.6.weight")),
    "densenet": (("densenet121", "densenet161", "densenet169", "densenet201"),
                 ("features.denseblock1.denselayer1.conv1.weight", "classifier.weight")),
    "mobilenet_v2": (("mobilenet_v2",), ("features.1.conv.0.0.weight", "classifier.1.weight")),
    "mobilenet_v3": (("mobilenet_v3_small", "mobilenet_v3_large"),
                     ("features.1.block.0.0.weight", "classifier.3.weight")),
    "efficientnet": (("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
                      "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s",
                      "efficientnet_v2_m", "efficientnet_v2_l"),
                     ("features.1.0.block.0.0.weight", "classifier.1.weight")),
}


@dataclass
class Candidate:
    """How well a state_dict fits one architecture."""

    name: str
    num_classes: int
    missing: list[str] = field(default_factory=list)        # expected by the model, absent from the file
    unexpected: list[str] = field(default_factory=list)     # in the file, unknown to the model
    mismatched: list[str] = field(default_factory=list)     # present in both with different shapes

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def errors(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)


def head_classes(state: dict[str, torch.Tensor]) -> int:
    """Number of classes from the classifier head: the output size of the last 2-D weight."""
    for key in reversed(list(state)):
        if key.endswith("weight") and state[key].dim() == 2:
            return int(state[key].shape[0])
    return 1000


def _candidates_for(state: dict[str, torch.Tensor]) -> list[str]:
    hinted = [names for names, markers in FAMILIES.values() if all(m in state for m in markers)]
    if hinted:
        return [n for names in hinted for n in names]
    return [n for names, _ in FAMILIES.values() for n in names]


def score(name: str, state: dict[str, torch.Tensor], num_classes: int) -> Candidate:
    """Compare a state_dict with torchvision's ``name`` built on the meta device (no memory, no weights)."""
    import torchvision  # imported on use: it adds a second to `import diagnostics`

    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    return Candidate(name, num_classes,
                     missing=sorted(set(expected) - set(got)), unexpected=sorted(set(got) - set(expected)),
                     mismatched=sorted(k for k in set(expected) & set(got) if expected[k] != got[k]))


def match_torchvision(state: dict[str, torch.Tensor]) -> list[Candidate]:
    """Every plausible torchvision classifier for the weights, best fit first."""
    num_classes = head_classes(state)
    return sorted((score(n, state, num_classes) for n in _candidates_for(state)), key=lambda c: c.errors)


if TYPE_CHECKING:
    from .probing import Batch


@dataclass
class BuiltModel:
    """A rebuilt model, where its architecture came from and how well the file's keys fit it."""

    model: nn.Module
    architecture: str               # e.g. "resnet18" or "project CNN (residual+batchnorm, depth 20)"
    input_shape: tuple[int, ...]    # (C, H, W) or (C, L) a probe feeds it; () when make_batch does
    config: dict | None = None
    family: str = ""                # e.g. "torchvision resnet", "timm convnext", "transformers gpt2"
    fixed_size: bool = False        # the input size is part of the weights (ViT position embeddings)
    make_batch: Callable[[int, int], Batch] | None = None   # (batch size, seed) -> a synthetic batch that fits
    loss: str = "cross_entropy"     # the probe's default loss for it ("model_loss": the model's own)
    matched: int = 0                # the file's keys the model has, with the same shapes
    missing: list[str] = field(default_factory=list)        # the model's keys the file lacks (tied ones)
    unexpected: list[str] = field(default_factory=list)     # the file's keys the model ignores
    alternatives: list[str] = field(default_factory=list)   # other architectures the weights fit as well


def build_model(ckpt: Checkpoint) -> nn.Module:
    """The model of a checkpoint: its architecture rebuilt and its weights loaded strictly (see :func:`rebuild`).

    Raises:
        CheckpointError: The architecture is unknown or the weights do not fit it.
    """
    return rebuild(ckpt).model


def rebuild(ckpt: Checkpoint, *, timm_name: str | None = None, budget: int | None = None) -> BuiltModel:
    """Rebuild the architecture of a checkpoint and load its weights (strictly), with a description.

    Tried in order: this project's recorded CNN config, a Hugging Face config, a ``torch.export`` program, the
    timm model ``timm_name`` if given, an exact torchvision classifier, then the timm signature index
    (:mod:`.timm_index`). Nothing is built before its size is checked against the memory ``budget``.

    Raises:
        CheckpointError: The architecture is unknown; the message lists the closest candidates with their
            missing and unexpected keys.
    """
    budget = budget_bytes(budget)
    if ckpt.format == "huggingface":
        from .huggingface import rebuild_hf

        return rebuild_hf(ckpt, budget)
    if ckpt.program is not None:
        return _rebuild_exported(ckpt)
    if timm_name:
        return rebuild_timm(ckpt, timm_name, budget)
    if ckpt.architecture is not None:

        try:
            config = CNNConfig.from_dict(dict(ckpt.architecture))
        except (TypeError, ModelConfigError) as exc:
            raise CheckpointError(f"{ckpt.source}: the recorded architecture is invalid ({exc})") from None
        check_config(config, ckpt.state_dict, ckpt.source)
        model = build_cnn(config)
        _load(model, ckpt)
        shape = (config.in_channels,) + (config.input_size,) * config.dims
        return BuiltModel(model, f"project CNN ({config.variant}, depth {config.depth}, {config.activation})",
                          shape, config.to_dict())
    from .timm_index import recognise_timm

    timm_match = recognise_timm({k: tuple(v.shape) for k, v in ckpt.state_dict.items()})
    hinted = any(all(m in ckpt.state_dict for m in markers) for _, markers in FAMILIES.values())
    # Without a torchvision family's marker keys, scoring every torchvision model (on the meta device) is only
    # worth its seconds when nothing else matched: for the closest candidates of the error message.
    candidates = match_torchvision(ckpt.state_dict) if hinted or timm_match is None else []
    exact = [c for c in candidates if c.exact]
    if not exact and timm_match is not None:
        return rebuild_timm(ckpt, timm_match.name, budget, timm_match.alternatives)
    if not exact:
        closest = "; ".join(
            f"{c.name}: {len(c.missing)} missing (e.g. {c.missing[:3]}), {len(c.unexpected)} unexpected "
            f"(e.g. {c.unexpected[:3]}), {len(c.mismatched)} with other shapes (e.g. {c.mismatched[:2]})"
            for c in candidates[:3])
        raise CheckpointError(f"{ckpt.source}: the weights match no known architecture (this project's CNNs and "
                              f"torchvision's resnet, vgg, densenet, mobilenet and efficientnet families, and timm's "
                              f"{', '.join(FAMILIES_TIMM)}). Closest: {closest}. Pick the timm model by name if it is "
                              "one; the weight-only views (norms, kernels) still work.")
    best = exact[0]
    import torchvision

    model = torchvision.models.get_model(best.name, weights=None, num_classes=best.num_classes)
    _load(model, ckpt)
    also = [f"timm {timm_match.name}"] + [f"timm {n}" for n in timm_match.alternatives] if timm_match else []
    family = next(f for f, (names, _) in FAMILIES.items() if best.name in names)
    return BuiltModel(model, best.name, (3, 224, 224), family=f"torchvision {family}",  # a probe may use less
                      matched=len(ckpt.state_dict), alternatives=[c.name for c in exact[1:]] + also)


FAMILIES_TIMM = ("resnet", "resnetv2", "efficientnet", "mobilenetv3", "convnext", "vit", "deit", "swin", "regnet",
                 "densenet")


def rebuild_timm(ckpt: Checkpoint, name: str, budget: int, alternatives: list[str] | None = None) -> BuiltModel:
    """The timm model ``name`` (random init, no download) with the checkpoint's weights loaded strictly.

    The model is built on the meta device first: its size is checked against ``budget`` and its keys and
    shapes against the file's, so a wrong pick is reported (missing, unexpected, other shapes) before
    anything is allocated. The head's size comes from the file (``num_classes=0`` when it has none). Dropout
    and stochastic depth are built switched off, so a probe in training mode is deterministic.

    Raises:
        CheckpointError: Not a timm model name, over the budget, or weights that do not fit it.
    """
    import timm

    from .timm_index import model_shapes

    if name not in timm.list_models():
        raise CheckpointError(f"{name!r} is not a timm model name (timm {timm.__version__}); pick one from the list")
    _, head, input_size = model_shapes(name)
    weight = ckpt.state_dict.get(f"{head[0]}.weight") if head else None
    classes = int(weight.shape[0]) if weight is not None else 0
    expected, _, _ = model_shapes(name, num_classes=classes)
    cost = sum(math.prod(s) * 4 for s in expected.values())
    if cost > budget:
        raise over_budget(ckpt.source, f"timm's {name}", cost, budget)
    got = {k: tuple(v.shape) for k, v in ckpt.state_dict.items()}
    candidate = Candidate(name, classes, sorted(set(expected) - set(got)), sorted(set(got) - set(expected)),
                          sorted(k for k in set(expected) & set(got) if expected[k] != got[k]))
    if not candidate.exact:
        raise CheckpointError(
            f"{ckpt.source}: the weights do not fit timm's {name}: {len(candidate.missing)} missing (e.g. "
            f"{candidate.missing[:3]}), {len(candidate.unexpected)} unexpected (e.g. {candidate.unexpected[:3]}), "
            f"{len(candidate.mismatched)} with other shapes (e.g. {candidate.mismatched[:3]}). The weight-only "
            "views still work.")
    try:                # the weights' network without dropout or stochastic depth: one probe, one answer
        model = timm.create_model(name, pretrained=False, num_classes=classes, drop_rate=0.0, drop_path_rate=0.0)
    except TypeError:   # a model without those options has no randomness to switch off
        model = timm.create_model(name, pretrained=False, num_classes=classes)
    _load(model, ckpt)
    patch = getattr(model, "patch_embed", None)
    fixed = bool(getattr(patch, "strict_img_size", False)) or any("relative_position" in k for k in expected)
    family = next((f for f in FAMILIES_TIMM if name.startswith(f) or name.startswith(f"tf_{f}")), "other")
    return BuiltModel(model, f"timm {name}", input_size, family=f"timm {family}", fixed_size=fixed,
                      matched=len(expected), alternatives=[f"timm {n}" for n in alternatives or []])


def _rebuild_exported(ckpt: Checkpoint) -> BuiltModel:
    from .exported import rebuild_exported
    from .probing import Batch

    archive = ckpt.program
    module = rebuild_exported(archive, ckpt.source)
    args, kwargs = archive.example_inputs or ((), {})
    out = archive.program.graph_module.graph.output_node().args[0]
    val = out[0].meta.get("val") if isinstance(out, (tuple, list)) and out and hasattr(out[0], "meta") else None
    loss = "cross_entropy" if val is not None and val.dim() == 2 and val.is_floating_point() else "sum_of_squares"

    def like(t: Any, gen: torch.Generator) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if t.is_floating_point():
            return torch.randn(t.shape, generator=gen, dtype=t.dtype)
        low, high = (int(t.min()), int(t.max())) if t.numel() else (0, 0)
        return torch.randint(low, high + 1, t.shape, generator=gen, dtype=t.dtype)

    def make_batch(batch_size: int, seed: int) -> Batch:
        gen = torch.Generator().manual_seed(seed)
        new_args = tuple(like(a, gen) for a in args)
        new_kwargs = {k: like(v, gen) for k, v in kwargs.items()}
        x: Any = new_args[0] if len(new_args) == 1 and not new_kwargs else (new_kwargs if not new_args else None)
        if x is None:
            raise CheckpointError(f"{ckpt.source}: the program takes several positional inputs; give a batch file")
        shapes = [tuple(t.shape) for t in (*new_args, *new_kwargs.values()) if isinstance(t, torch.Tensor)]
        return Batch(x, None, f"synthetic inputs shaped like the archive's sample inputs {shapes} (exported with "
                              "static shapes, so the batch size is the exported one)", True)

    first = args[0] if args and isinstance(args[0], torch.Tensor) else None
    return BuiltModel(module, f"torch.export program ({len(archive.operators)} ATen/prims operators)",
                      tuple(first.shape[1:]) if first is not None else (), family="torch.export",
                      fixed_size=True, make_batch=make_batch if archive.example_inputs else None, loss=loss,
                      matched=len(ckpt.state_dict))


def check_config(config: CNNConfig, state: dict[str, Any], name: str, budget: int | None = None) -> None:
    """Refuse a config whose model would not fit the budget or the file's own tensors, before it is built.

    The model is built on the meta device (shapes only, no memory); its parameter count is checked against
    the budget and every shape against the file's tensors, so a config asking for width 4096 beside tiny
    weights is refused without allocating anything.

    Raises:
        CheckpointError: Over the budget (how many parameters, how many MB), or shapes that differ.
    """
    with torch.device("meta"):
        expected = {k: (tuple(v.shape), v.numel() * v.element_size()) for k, v in CNN(config).state_dict().items()}
    cost = sum(nbytes for _, nbytes in expected.values())
    budget = budget_bytes(budget)
    if cost > budget:
        count = sum(math.prod(shape) for shape, _ in expected.values())
        raise over_budget(name, f"the model its config asks for ({count:,} parameters and buffers, depth "
                                f"{config.depth}, width {config.width})", cost, budget)
    got = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    differ = sorted(k for k in expected.keys() | got.keys() if expected.get(k, (None,))[0] != got.get(k))
    if differ:
        key = differ[0]
        raise CheckpointError(
            f"{name}: the recorded architecture does not fit the file's weights ({len(differ)} tensors differ; "
            f"{key!r}: the config asks for {expected.get(key, ('none',))[0]}, the file holds {got.get(key, 'none')}"
            f"; the config's model would take {megabytes(cost)}). Nothing was built.")


def _load(model: nn.Module, ckpt: Checkpoint) -> None:
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.source}: the weights do not fit the architecture ({str(exc)[:500]})") from None


#: Elements of a tensor converted to float64 at a time by :func:`weight_summary` (32 MB).
SUMMARY_CHUNK = 2**20


def _chunks(t: torch.Tensor) -> list[torch.Tensor]:
    """``t`` as views along its first dimension of at most about :data:`SUMMARY_CHUNK` elements each; a
    stride-0 (``expand``) view stays a view, so no chunk costs more than its own size once made dense."""
    if t.dim() == 0:
        return [t.reshape(1)]
    rows = max(1, SUMMARY_CHUNK // max(1, t[0].numel()))
    return list(t.split(rows)) if t[0].numel() <= SUMMARY_CHUNK else [c for r in t for c in _chunks(r)]


def weight_summary(state: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Per-parameter weight statistics from the weights alone (no architecture needed).

    Each tensor is reduced in chunks (:data:`SUMMARY_CHUNK` elements in float64 at a time), so the summary
    of a tensor never costs a float64 copy of it.
    """
    rows = []
    for i, (name, t) in enumerate(state.items()):
        if not t.is_floating_point() or t.numel() == 0:
            continue
        sq = ab = peak = 0.0
        nonfinite = 0
        for chunk in _chunks(t.detach()):
            x = chunk.double()
            sq += float(x.square().sum())
            ab += float(x.abs().sum())
            peak = max(peak, float(x.abs().max()))
            nonfinite += int((~torch.isfinite(x)).sum())
        layer, _, attr = name.rpartition(".")
        rows.append({"order": i, "param": name, "layer": layer, "kind": attr, "shape": "x".join(map(str, t.shape)),
                     "numel": t.numel(), "norm": math.sqrt(sq), "mean_abs": ab / t.numel(), "max_abs": peak,
                     "nonfinite": nonfinite})
    return pd.DataFrame(rows)


def conv_kernels(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Conv weights (3-D or 4-D tensors) by layer name, as float32 arrays for the kernel heatmaps."""
    return {name.rpartition(".")[0]: t.detach().float().numpy() for name, t in state.items()
            if name.endswith("weight") and t.dim() in (3, 4) and t.is_floating_point()}


@dataclass
class Recognition:
    """What a checkpoint turned out to be, for display: the rebuilt model or why it could not be rebuilt."""

    source: str
    format: str
    parameters: int
    tensors: int
    built: BuiltModel | None
    problem: str | None
    metadata: dict


def recognise(ckpt: Checkpoint, timm_name: str | None = None) -> Recognition:
    """Try to rebuild the checkpoint's model; an unknown architecture is reported, not raised."""
    try:
        built, problem = rebuild(ckpt, timm_name=timm_name), None
    except CheckpointError as exc:
        built, problem = None, str(exc)
    return Recognition(ckpt.source, ckpt.format, ckpt.parameter_count, len(ckpt.state_dict), built, problem,
                       ckpt.metadata)


def layer_table(model: nn.Module) -> pd.DataFrame:
    """The model's leaf layers with their type and parameter count, in definition order."""
    rows = [{"layer": name, "type": type(m).__name__, "parameters": sum(p.numel() for p in m.parameters(recurse=False))}
            for name, m in model.named_modules() if next(m.children(), None) is None and name]
    return pd.DataFrame(rows)


# --- this project's own checkpoints ---------------------------------------------------------------------------

class LoadedCNN(NamedTuple):
    """A loaded checkpoint: the rebuilt model, its architecture and the extra fields saved with it."""

    model: CNN
    config: CNNConfig
    extra: dict[str, Any]


def load_project_checkpoint(path: str | os.PathLike[str]) -> LoadedCNN:
    """Rebuild a model saved by :func:`~diagnostics.experiments.models.save_checkpoint`.

    Read with :func:`~.loading.safe_torch_load` (``weights_only=True``), so nothing in the file ever runs.

    Raises:
        CheckpointError: The file is missing, unreadable, not one of ours, or its weights do not fit the
            recorded architecture.
    """
    if not Path(path).expanduser().is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    data, name = read_source(path, DEFAULT_MAX_BYTES)
    try:
        payload = safe_torch_load(data, name)
    except CheckpointError as exc:
        raise CheckpointError(f"{path} could not be loaded safely: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project's CNN family (no "
                              f"format={CHECKPOINT_FORMAT!r} marker); save one with save_checkpoint()")
    if int(payload.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer version (format {payload['version']}); upgrade")
    try:
        config = CNNConfig.from_dict(dict(payload["config"]))
    except (KeyError, TypeError, ModelConfigError) as exc:
        raise CheckpointError(f"{path}: the recorded architecture is invalid ({exc})") from None
    state = payload.get("state_dict")
    check_config(config, state if isinstance(state, dict) else {}, str(path))
    model = build_cnn(config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the weights do not fit the recorded architecture ({exc})") from None
    return LoadedCNN(model, config, dict(payload.get("extra", {})))
