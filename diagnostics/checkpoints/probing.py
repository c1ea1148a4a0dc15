"""Probe a model's gradient flow: one recorded backward (or a few training steps) on a real or synthetic batch,
plus the manual-gradient check of every supported layer."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..errors import CheckpointError, ProbeError
from .budget import budget_bytes
from .loading import safe_torch_load
from ..recording import GradientMonitor
from ..store import RunStore

LOSSES = ("cross_entropy", "sum_of_squares", "model_loss")
#: A probe batch may cost this fraction of the memory budget made dense: the model's activations on it take
#: several times its size.
BATCH_BUDGET_SHARE = 1 / 8


#: What a model is called with: one tensor, or named tensors (``model(**x)``, e.g. input_ids and labels).
Inputs = torch.Tensor | dict[str, torch.Tensor]


@dataclass
class Batch:
    """Inputs and labels for a probe, with where they came from."""

    x: Inputs                        # (N, C, H, W) or (N, C, L), or named inputs {"input_ids": (N, L), ...}
    y: torch.Tensor | None           # (N,) class labels, or None (named inputs carry their own "labels")
    source: str                      # e.g. "digits (bundled, real)" or "synthetic N(0, 1)"
    synthetic: bool


@dataclass
class ProbeResult:
    """What a probe recorded."""

    run_id: str | None
    frame: pd.DataFrame              # per (step, layer), as GradientMonitor.frame()
    checks: pd.DataFrame             # manual vs autograd rows per layer (empty when not run)
    synthetic: bool
    batch_source: str
    losses: list[float]
    notes: list[str] = field(default_factory=list)   # what the probe did that the user should know (dtype)


def default_batch(input_shape: tuple[int, ...], num_classes: int, batch_size: int = 8, seed: int = 0) -> Batch:
    """The bundled digits when the model takes 1×8×8 images (or 1×(8k)×(8k)), else labelled synthetic data."""
    channels, *spatial = input_shape
    if channels == 1 and len(spatial) == 2 and spatial[0] == spatial[1] and spatial[0] % 8 == 0 \
            and num_classes <= 10:
        from ..experiments.data import load_digits

        split = load_digits(seed=seed, upsample=spatial[0] // 8)
        keep = split.y_test < num_classes
        x, y = split.x_test[keep][:batch_size], split.y_test[keep][:batch_size]
        return Batch(x, y, f"digits (bundled, real handwritten images, {tuple(x.shape[1:])})", False)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *input_shape), generator=gen)
    y = torch.randint(0, max(num_classes, 1), (batch_size,), generator=gen)
    return Batch(x, y, f"synthetic N(0, 1) inputs {tuple(input_shape)} with random labels", True)


def load_batch_file(source: str | os.PathLike[str] | bytes, max_bytes: int = 512 * 2**20) -> Batch:
    """A batch file, loaded with ``weights_only=True``. Two layouts:

    * a model taking one tensor: ``torch.save(x)``, ``torch.save((x, y))`` or ``torch.save({"x": x, "y": y})``
      with ``x`` a floating tensor (N, C, ...) and ``y`` (N,) class labels;
    * a model taking named inputs (Hugging Face): ``torch.save({"input_ids": ids, "attention_mask": mask,
      "labels": labels})`` (any names the model's ``forward`` takes: ``pixel_values``, ``decoder_input_ids``,
      ...), each a tensor with the batch first; with ``labels`` the model's own loss is probed.
    """
    data = source if isinstance(source, bytes) else open(os.fspath(source), "rb").read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ProbeError(f"the batch file is over {max_bytes / 2**20:.0f} MB")
    try:
        obj = safe_torch_load(data, "the batch file", int(budget_bytes() * BATCH_BUDGET_SHARE))
    except CheckpointError as exc:
        raise ProbeError(f"the batch file could not be loaded safely ({exc}); save it with "
                         "torch.save({'x': inputs, 'y': labels}, path)") from None
    if isinstance(obj, dict) and "x" not in obj and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if not all(isinstance(k, str) and v.dim() >= 1 for k, v in obj.items()):
            raise ProbeError("named inputs must all be tensors with the batch first, e.g. {'input_ids': (N, L)}")
        sizes = {k: v.shape[0] for k, v in obj.items()}
        if len(set(sizes.values())) != 1:
            raise ProbeError(f"named inputs must share their batch size, got {sizes}")
        return Batch(dict(obj), None, f"uploaded batch of named inputs "
                     f"({', '.join(f'{k} {tuple(v.shape)}' for k, v in obj.items())})", False)
    if isinstance(obj, torch.Tensor):
        x, y = obj, None
    elif isinstance(obj, dict) and isinstance(obj.get("x"), torch.Tensor):
        x, y = obj["x"], obj.get("y")
    elif isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        x, y = obj[0], obj[1] if len(obj) > 1 else None
    else:
        raise ProbeError("the batch file must hold a tensor of inputs, a (inputs, labels) pair, "
                         "{'x': inputs, 'y': labels}, or named inputs such as {'input_ids': ..., 'labels': ...}")
    if not x.is_floating_point() or x.dim() < 2:
        raise ProbeError(f"inputs must be a floating tensor (N, C, ...), got {x.dtype} of shape {tuple(x.shape)}")
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape[:1] != x.shape[:1]):
        raise ProbeError("labels must be a tensor with one entry per input")
    return Batch(x.float(), y.long() if y is not None else None, f"uploaded batch {tuple(x.shape)}", False)


def folder_batch(root: str | os.PathLike[str], input_shape: tuple[int, ...], batch_size: int = 8,
                 seed: int = 0) -> Batch:
    """A batch of real images from a local folder of class sub-folders, resized to the model's input."""
    from ..experiments.data import DataError, load_image_folder

    channels, *spatial = input_shape
    if len(spatial) != 2 or channels not in (1, 3):
        raise ProbeError(f"an image folder can feed models taking (1 or 3, H, W) images, not {input_shape}")
    try:
        split = load_image_folder(root, image_size=spatial[0], grayscale=channels == 1, seed=seed,
                                  limit=max(4 * batch_size, 16), test_fraction=0.25)
    except DataError as exc:
        raise ProbeError(str(exc)) from None
    return Batch(split.x_train[:batch_size], split.y_train[:batch_size],
                 f"image folder {root} ({len(split.classes)} classes, {tuple(split.x_train.shape[1:])})", False)


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return _first_tensor(output[0])
    if isinstance(output, dict) and output:
        return _first_tensor(next(iter(output.values())))
    raise ProbeError(f"the model returned {type(output).__name__}, not a tensor")


def _loss_fn(loss: str | Callable[..., torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    if callable(loss):
        return loss
    if loss == "cross_entropy":
        def ce(out: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            if y is None or out.dim() != 2:
                raise ProbeError("cross_entropy needs class labels and (N, classes) outputs; use "
                                 "loss='sum_of_squares' for other models")
            if int(y.max()) >= out.shape[1]:
                raise ProbeError(f"labels go up to {int(y.max())} but the model has {out.shape[1]} outputs")
            return nn.functional.cross_entropy(out, y)
        return ce
    if loss == "sum_of_squares":
        return lambda out, y: out.pow(2).mean()
    raise ProbeError(f"unknown loss {loss!r}; choose one of {LOSSES} or pass a function (output, labels) -> loss")


def _describe(x: Inputs) -> str:
    if isinstance(x, dict):
        return ", ".join(f"{k} {tuple(v.shape)}" for k, v in x.items())
    return str(tuple(x.shape))


def _call(model: nn.Module, x: Inputs) -> Any:
    return model(**x) if isinstance(x, dict) else model(x)


def _model_loss(output: Any) -> torch.Tensor:
    value = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    if not isinstance(value, torch.Tensor):
        raise ProbeError("the model returned no loss: give labels among its named inputs ('labels'), or choose "
                         "loss='sum_of_squares'")
    return value


def float_copy(model: nn.Module, budget: int | None = None) -> tuple[nn.Module, list[str]]:
    """A float32 copy of ``model`` in training mode, and a note when its weights were in another dtype.

    Gradient statistics are recorded in float32, so bf16/fp16 weights are probed in a float32 copy: twice
    their size, checked against the memory budget first and said in the note (the rebuilt model keeps its
    own dtype).

    Raises:
        ProbeError: The copy would not fit the memory budget.
    """
    tensors = [*model.parameters(), *model.buffers()]
    other = sorted({str(t.dtype).removeprefix("torch.") for t in tensors
                    if t.is_floating_point() and t.dtype != torch.float32})
    cost = sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in tensors)
    if cost > budget_bytes(budget):
        raise ProbeError(f"the probe's float32 copy of the model would take {cost / 2**20:.0f} MB, over the memory "
                         "budget (DIAGNOSTICS_MEMORY_BUDGET_MB)")
    work = copy.deepcopy(model).float()
    work.train()
    notes = [f"Weights held in {', '.join(other)} were probed in a float32 copy ({cost / 2**20:.0f} MB); the "
             "rebuilt model keeps its dtype."] if other else []
    return work, notes


def probe(model: nn.Module, batch: Batch | torch.Tensor | None = None, loss: str | Callable = "cross_entropy",
          steps: int = 1, store: RunStore | None = None, *, input_shape: tuple[int, ...] | None = None,
          num_classes: int | None = None, lr: float = 1e-3, run_name: str = "probe", check: bool = True,
          check_batch: int = 2, seed: int = 0, meta: dict | None = None, histograms: bool = True) -> ProbeResult:
    """Record the gradient flow of ``model`` on one batch (and optionally a few SGD steps from its weights).

    The model itself is never changed: the probe works on a float32 copy (see :func:`float_copy`).

    Args:
        model: The model (e.g. from :func:`diagnostics.build_model`).
        batch: A :class:`Batch` (one input tensor, or named inputs for ``model(**inputs)``), an input tensor,
            or None for the bundled digits when the shapes fit, else synthetic data (``result.synthetic``
            says which).
        loss: ``"cross_entropy"``, ``"sum_of_squares"``, ``"model_loss"`` (the ``loss`` the model returns
            when its named inputs hold labels, as Hugging Face models do) or a function
            ``(output, labels) -> loss``.
        steps: 1 records the gradient at the checkpoint's weights; more also takes SGD steps (recorded).
        store: Where to record the run (so every dashboard page shows it); None keeps it in memory.
        input_shape: (C, H, W) or (C, L) when no batch is given and the model does not record one.
        num_classes: Classes for synthetic labels (default: from the output size).
        lr: SGD learning rate of the extra steps.
        run_name: Name of the recorded run.
        check: Also compare the manual backward of every supported layer with autograd (one input tensor
            only; skipped, with a note, for named inputs).
        check_batch: How many inputs the manual check uses.
        seed: Seed of the synthetic batch.
        meta: Extra run metadata (e.g. the checkpoint's file name).
        histograms: Record log10|g| histograms of every layer's output gradient (most of the probe's time
            on large activations, e.g. two thirds of a Swin-T's at 224×224).
    """
    if steps < 1:
        raise ProbeError("steps must be at least 1")
    work, notes = float_copy(model)
    if batch is None or isinstance(batch, torch.Tensor):
        if isinstance(batch, torch.Tensor):
            batch = Batch(batch.float(), None, f"given inputs {tuple(batch.shape)}", False)
        else:
            shape = input_shape or _input_shape(work)
            if shape is None:
                raise ProbeError("the input shape is unknown: pass input_shape=(C, H, W) or a batch")
            classes = num_classes or _output_size(work, shape)
            batch = default_batch(tuple(shape), classes, seed=seed)
    named = isinstance(batch.x, dict)
    if named:
        batch = Batch({k: v.float() if v.is_floating_point() else v for k, v in batch.x.items()}, batch.y,
                      batch.source, batch.synthetic)
    loss_fn = _loss_fn(loss) if loss != "model_loss" else None
    opt = torch.optim.SGD(work.parameters(), lr=lr) if steps > 1 else None
    losses: list[float] = []
    try:
        if batch.y is None and loss == "cross_entropy" and not named:
            with torch.no_grad():
                out = _first_tensor(work(batch.x))          # the whole batch: exported shapes are static
            gen = torch.Generator().manual_seed(seed)
            batch = Batch(batch.x, torch.randint(0, out.shape[-1], (len(batch.x),), generator=gen),
                          batch.source + " with random labels", batch.synthetic)
        run_meta = {"probe": True, "synthetic_batch": batch.synthetic, "batch": batch.source, **(meta or {})}
        with GradientMonitor(work, store=store, run_name=run_name, optimizer=opt, histogram_every=int(histograms),
                             kernels="auto", kernel_every=1, meta=run_meta) as mon:
            for _ in range(steps):
                output = _call(work, batch.x)
                value = _model_loss(output) if loss_fn is None else loss_fn(_first_tensor(output), batch.y)
                value.backward()
                mon.step(loss=value)
                losses.append(float(value.detach()))
                if opt is not None:
                    opt.step()
                work.zero_grad()
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        if isinstance(exc, ProbeError):
            raise
        raise ProbeError(f"the model could not run on the batch {_describe(batch.x)} ({str(exc)[:300]}); "
                         "check the input shape") from None
    checks = pd.DataFrame()
    if check and named:
        notes.append("The manual backward check needs one input tensor; it was skipped for named inputs.")
    elif check:
        from .. import manual

        checked = copy.deepcopy(model).double()
        checked.train()
        checks = manual.check_model(checked, batch.x[:check_batch].double())
    return ProbeResult(mon.run_id if store is not None else None, mon.frame(), checks, batch.synthetic,
                       batch.source, losses, notes)


def _input_shape(model: nn.Module) -> tuple[int, ...] | None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "in_channels"):
        return (config.in_channels,) + (config.input_size,) * config.dims
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))), None)
    if isinstance(first, nn.Conv2d):
        return (first.in_channels, 64, 64)
    if isinstance(first, nn.Conv1d):
        return (first.in_channels, 64)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    return None


def _output_size(model: nn.Module, shape: tuple[int, ...]) -> int:
    try:
        with torch.no_grad():
            model.eval()
            out = _first_tensor(model(torch.zeros((2, *shape))))
            model.train()
    except Exception as exc:  # noqa: BLE001 - any failure means the shape does not fit
        raise CheckpointError(f"the model does not accept inputs of shape {shape} ({str(exc)[:200]})") from None
    return int(out.shape[-1]) if out.dim() >= 2 else 1
