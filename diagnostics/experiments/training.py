"""Training one CNN variant under a shared configuration, recorded step by step by the monitor.

The configuration every variant of a comparison shares (:class:`TrainConfig`), the progress a run reports,
deterministic batches, and the loop itself (:func:`run_job` trains a job's variants one after the other in
this process). Starting processes is :mod:`.launch`'s job; the background job of the dashboard is
:mod:`.jobs`'.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingError
from ..recording import GradientMonitor
from ..store import RunStore
from .data import DataSplit
from .models import VARIANTS, CNNConfig, build_cnn, save_checkpoint
from .syncbn import convert_sync_batchnorm

#: The default comparison: all four standard variants.
DEFAULT_VARIANTS: tuple[str, ...] = tuple(VARIANTS)
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
#: File name of the final model checkpoint kept in each comparison run's directory.
CHECKPOINT_FILE = "model.pt"


@dataclass(frozen=True)
class TrainConfig:
    """One optimiser configuration, shared by every variant of a comparison (so the comparison is controlled).

    The default (SGD, learning rate 0.01, momentum 0.9, batch 64) keeps all four standard variants stable at
    depth 20 with ReLU and PyTorch's default init on the digits set.
    """

    steps: int = 300            # optimiser steps per variant
    batch_size: int = 64        # global batch (split evenly across processes under DDP)
    lr: float = 0.01            # learning rate
    optimizer: str = "sgd"      # sgd | adam
    momentum: float = 0.9       # SGD momentum (ignored by Adam)
    weight_decay: float = 0.0
    eval_every: int = 25        # held-out accuracy every this many steps (and at the last step)

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.steps, int) and self.steps >= 1, "steps must be a positive integer"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size must be a positive integer"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {list(OPTIMIZERS)}"),
            (0.0 <= self.momentum < 1.0, "momentum must be in [0, 1)"),
            (self.weight_decay >= 0.0, "weight_decay must be >= 0"),
            (isinstance(self.eval_every, int) and self.eval_every >= 1, "eval_every must be a positive integer"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(f"{message}; got {self!r}")

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        """The configured optimiser over ``params``."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class Progress:
    """One progress report of a comparison, sent after every training step of every variant."""

    variant: str
    index: int                  # position of the variant in the comparison (0-based)
    variants: int               # number of variants
    step: int                   # steps done for this variant (1..steps)
    steps: int                  # steps planned per variant
    loss: float                 # training loss of the step (global batch)
    accuracy: float             # latest held-out accuracy (NaN before the first evaluation)
    run_id: str
    diverged: bool = False      # the loss became NaN/Inf: this variant stops here
    done: bool = False          # this variant has finished (its run is closed)


ProgressCallback = Callable[[Progress], None]


def new_group_id() -> str:
    """A unique id for the runs of one comparison, e.g. ``cmp-20250101-120000-1a2b``."""
    return f"cmp-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """The training order: a fresh seeded permutation per epoch, cut into global batches.

    Args:
        n: Training samples.
        batch_size: Global batch size.
        steps: Number of batches.
        seed: Seed of the order (every variant and every process uses the same one).

    Returns:
        Indices of shape (steps, batch_size).
    """
    if n < batch_size:
        raise TrainingError(f"the training split has {n} samples, fewer than batch_size={batch_size}")
    gen = torch.Generator().manual_seed(seed)
    per_epoch = n // batch_size                                      # full batches per epoch
    epochs = -(-steps // per_epoch)
    order = torch.stack([torch.randperm(n, generator=gen)[: per_epoch * batch_size] for _ in range(epochs)])
    return order.reshape(-1, batch_size)[:steps]                     # (steps, batch_size)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero in this thread while training, then restore the previous mode.

    Very deep vanishing networks push activations and gradients into the denormal range (below ~1e-38 in
    float32), where CPU arithmetic is slower. The mode is per thread (set it in the thread that trains);
    PyTorch has no getter for it, so the current mode is measured.
    """
    before = bool((torch.tensor([1e-38], dtype=torch.float32) / 100.0).item() == 0.0)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)



def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("device 'cuda' was asked for but CUDA is not available; use device='cpu'")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


# --- one run ------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             chunk: int = 512) -> float:
    """Accuracy of ``model`` on ``(x, y)`` in eval mode (batch norm uses running statistics); restores the mode.

    Args:
        model: The network.
        x: Inputs of shape (N, C, H, W) or (N, C, L).
        y: Labels of shape (N,).
        device: Where to compute.
        chunk: Samples per forward pass.
    """
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(y), chunk):
            logits = model(x[start:start + chunk].to(device))       # (n, classes)
            correct += int((logits.argmax(1).cpu() == y[start:start + chunk]).sum())
    finally:
        model.train(was_training)
    return correct / max(1, len(y))


@dataclass
class Job:
    """Everything a (possibly remote) process needs to train the variants of one comparison."""

    configs: dict[str, CNNConfig]
    train: TrainConfig
    data: DataSplit
    seed: int
    store_root: str
    group: str
    device: str | None
    kernels: Any = "auto"
    meta: dict[str, Any] = field(default_factory=dict)
    #: What :func:`~.launch.compare` returns for each run label: the label itself, or ``(variant, depth)`` in
    #: a depth sweep (default: the label).
    keys: dict[str, Any] = field(default_factory=dict)
    #: Backward gain per block (``GradientMonitor(blocks=...)``); comparisons record it for ConvBlock.
    blocks: Any = "auto"


def _train_one(job: Job, variant: str, index: int, *, rank: int, world: int, device: torch.device,
               progress: ProgressCallback | None) -> str:
    """Train one variant; every rank runs this, rank 0 records. Returns the run id (``""`` on other ranks)."""
    config, cfg, data = job.configs[variant], job.train, job.data
    if cfg.batch_size % world:
        raise TrainingError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
    torch.manual_seed(job.seed)
    net = build_cnn(config, seed=job.seed).to(device)
    model: nn.Module = net
    if world > 1:
        if config.batchnorm:
            net = convert_sync_batchnorm(net, device)
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = cfg.make_optimizer(model.parameters())
    order = batch_indices(len(data.y_train), cfg.batch_size, cfg.steps, job.seed)  # (steps, global batch)
    local = cfg.batch_size // world
    store = RunStore(job.store_root) if rank == 0 else None
    key = job.keys.get(variant, variant)
    swept = isinstance(key, tuple)                # a depth sweep: the label already names the depth
    meta = {"kind": "comparison", "group": job.group, "variant": variant, "series": key[0] if swept else variant,
            "config": config.to_dict(), "train": asdict(cfg), "dataset": data.info(), "seed": job.seed,
            "world_size": world, **job.meta}
    name = variant if swept else f"{variant} d{config.depth}"
    accuracy = math.nan
    diverged = False
    steps_done = 0
    with GradientMonitor(net, store=store, run_name=name, optimizer=optimizer, on_nonfinite="ignore",
                         kernels=job.kernels if rank == 0 else None, meta=meta, distributed=world > 1,
                         blocks=job.blocks) as mon:
        run_id = mon.run_id or ""
        for step in range(cfg.steps):
            idx = order[step, rank * local:(rank + 1) * local]      # (local,) this rank's slice
            x = data.x_train[idx].to(device)                        # (local, C, H, W) or (local, C, L)
            y = data.y_train[idx].to(device)                        # (local,)
            logits = model(x)                                       # (local, classes)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            totals = torch.stack([loss.detach().double(), (logits.argmax(1) == y).sum().double()])  # (2,)
            if world > 1:
                dist.all_reduce(totals)
            global_loss = totals[0] / world
            train_accuracy = totals[1] / cfg.batch_size
            evaluated = step % cfg.eval_every == 0 or step == cfg.steps - 1
            if rank == 0 and evaluated:
                accuracy = evaluate(net, data.x_test, data.y_test, device)
            mon.step(loss=global_loss, accuracy=accuracy if evaluated else math.nan, train_accuracy=train_accuracy)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps_done = step + 1
            diverged = not math.isfinite(float(global_loss))
            if progress is not None:
                progress(Progress(variant, index, len(job.configs), steps_done, cfg.steps, float(global_loss),
                                  accuracy, run_id, diverged=diverged))
            if diverged:
                break      # every rank sees the same global loss, so all stop together
    if rank == 0 and store is not None:
        if diverged:
            store.set_tags(run_id, ["diverged"])
        try:
            save_checkpoint(net, config, store.root / run_id / CHECKPOINT_FILE,
                            extra={"run": run_id, "variant": variant, "group": job.group, "step": steps_done})
        except OSError as exc:          # the run directory was deleted meanwhile, or the disk is full
            warnings.warn(f"run {run_id}: the final checkpoint was not saved ({exc})", RuntimeWarning,
                          stacklevel=2)
        if progress is not None:
            progress(Progress(variant, index, len(job.configs), steps_done, cfg.steps, float(global_loss),
                              accuracy, run_id, diverged=diverged, done=True))
    return run_id


def run_job(job: Job, *, rank: int = 0, world: int = 1, local_rank: int = 0,
             progress: ProgressCallback | None = None, only: Sequence[str] | None = None) -> dict[str, str]:
    """Train the job's variants (or ``only`` some of them) one after the other in this process."""
    device = resolve_device(job.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    runs = {}
    with flush_denormals():
        for index, variant in enumerate(job.configs):
            if only is None or variant in only:
                runs[variant] = _train_one(job, variant, index, rank=rank, world=world, device=device,
                                           progress=progress)
    return runs


