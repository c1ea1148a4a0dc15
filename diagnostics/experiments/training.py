"""Controlled comparisons: CNN variants trained on the same data, seed and optimiser, recorded; also under DDP."""

from __future__ import annotations

import contextlib
import math
import os
import queue as queue_module
import secrets
import socket
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .data import DataSplit, load_dataset
from ..errors import DiagnosticsError
from .models import VARIANTS, CNNConfig, build_cnn, save_checkpoint, variant_config
from ..recording import GradientMonitor
from ..store import RunStore

#: The default comparison: all four standard variants.
DEFAULT_VARIANTS: tuple[str, ...] = tuple(VARIANTS)
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
#: File name of the final model checkpoint kept in each comparison run's directory.
CHECKPOINT_FILE = "model.pt"


class TrainingError(DiagnosticsError, ValueError):
    """Training settings that cannot work (unknown optimiser, batch not divisible by processes, ...)."""


class DistributedTrainingError(DiagnosticsError, RuntimeError):
    """A process of a distributed comparison failed; the message carries the worker's error."""


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


# --- distributed pieces ---------------------------------------------------------------------------------------

class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes: forward all-reduces the input, backward all-reduces the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNormCPU(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose batch statistics are summed over all processes; works on CPU with gloo.

    ``torch.nn.SyncBatchNorm`` supports only accelerators. Here the per-channel Σx, Σx² and counts are
    all-reduced by a differentiable sum (whose backward all-reduces the gradient, as
    ``nn.SyncBatchNorm`` does), so forward and backward equal one process on the global batch. The
    parameters and buffers are those of ``nn.BatchNorm1d/2d``, so state dicts are interchangeable.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {input.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xd = x.double()                                              # (N, C, ...) sums in float64
        count = xd.new_full((1,), x.numel() // c)                     # (1,) local values per channel
        local = torch.cat([xd.sum(dims), (xd * xd).sum(dims), count])  # (2C + 1,) this rank's sums
        stats = _AllReduceSum.apply(local)                            # (2C + 1,) sums over all ranks
        n = stats[2 * c]
        mean = stats[:c] / n                                         # (C,)
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)      # (C,) biased, as batch norm uses
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (xd - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)  # (N, C, ...)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm synced across processes: ``nn.SyncBatchNorm`` on accelerators, :class:`SyncBatchNormCPU` on CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            synced = SyncBatchNormCPU(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced)
        else:
            convert_sync_batchnorm(child, device)
    return model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
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
class _Job:
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


def _train_one(job: _Job, variant: str, index: int, *, rank: int, world: int, device: torch.device,
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
    meta = {"kind": "comparison", "group": job.group, "variant": variant, "config": config.to_dict(),
            "train": asdict(cfg), "dataset": data.info(), "seed": job.seed, "world_size": world, **job.meta}
    name = f"{variant} d{config.depth}"
    accuracy = math.nan
    diverged = False
    steps_done = 0
    with GradientMonitor(net, store=store, run_name=name, optimizer=optimizer, on_nonfinite="ignore",
                         kernels=job.kernels if rank == 0 else None, meta=meta, distributed=world > 1) as mon:
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


def _run_job(job: _Job, *, rank: int = 0, world: int = 1, local_rank: int = 0,
             progress: ProgressCallback | None = None, only: Sequence[str] | None = None) -> dict[str, str]:
    """Train the job's variants (or ``only`` some of them) one after the other in this process."""
    device = _resolve_device(job.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    runs = {}
    with flush_denormals():
        for index, variant in enumerate(job.configs):
            if only is None or variant in only:
                runs[variant] = _train_one(job, variant, index, rank=rank, world=world, device=device,
                                           progress=progress)
    return runs


# --- launching ----------------------------------------------------------------------------------------------

def _ddp_worker(rank: int, world: int, port: int, job: _Job, events: Any) -> None:
    """Entry point of a DDP process: join the group, train every variant, rank 0 reports through ``events``."""
    device = _resolve_device(job.device, rank)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(_backend(device), init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        runs = _run_job(job, rank=rank, world=world, local_rank=rank,
                        progress=(lambda p: events.put(("progress", p))) if rank == 0 else None)
        if rank == 0:
            events.put(("result", runs))
        # Every rank finishes its collectives before any tears the group down: tearing down early aborted
        # a rank in gloo ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _variant_worker(rank: int, workers: int, job: _Job, taken: Any, events: Any) -> None:
    """Entry point of a process that trains variants side by side with the others: it takes the next variant
    not yet taken (``taken`` is a shared counter) until none is left, so a slow variant does not hold up others.
    """
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    variants = list(job.configs)
    runs: dict[str, str] = {}
    while True:
        with taken.get_lock():
            index = taken.value
            taken.value += 1
        if index >= len(variants):
            break
        runs.update(_run_job(job, local_rank=rank, only=[variants[index]],
                             progress=lambda p: events.put(("progress", p))))
    events.put(("result", runs))


_SPAWN_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start spawned workers without re-running the caller's ``__main__`` in them.

    A spawned process normally re-imports the parent's main script. The workers need only this module, and
    the main script may be a Streamlit page (which would run again, headless, in every worker) or a script
    without an ``if __name__ == "__main__":`` guard (which would try to start workers again).
    """
    with _SPAWN_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def _spawn(target: Callable[..., None], args: tuple, nprocs: int, progress: ProgressCallback | None,
           expected: int) -> dict[str, str]:
    """Start ``nprocs`` spawned processes running ``target(rank, *args, events)``; relay progress, merge results."""
    import torch.multiprocessing as mp

    events = mp.get_context("spawn").Queue()
    with _main_module_hidden():
        context = mp.start_processes(target, args=(*args, events), nprocs=nprocs, join=False,
                                     start_method="spawn")
    results: list[dict[str, str]] = []

    def drain() -> None:
        while True:
            try:
                kind, payload = events.get(timeout=0.05)
            except queue_module.Empty:
                return
            if kind == "result":
                results.append(payload)
            elif progress is not None:
                progress(payload)

    try:
        while True:
            drain()
            if context.join(timeout=0.1):
                break
        drain()
    except mp.ProcessRaisedException as exc:
        raise DistributedTrainingError(f"a training process failed:\n{exc}") from None
    except mp.ProcessExitedException as exc:
        raise DistributedTrainingError(f"a training process died ({exc})") from None
    if len(results) != expected:
        raise DistributedTrainingError("the training processes ended without sending all their results")
    return {k: v for r in results for k, v in r.items()}


def _execute(job: _Job, nproc: int, workers: int | str, progress: ProgressCallback | None) -> dict[str, str]:
    """Run a prepared job: under torchrun, as ``nproc`` DDP processes, or variants in ``workers`` processes."""
    if in_torchrun():
        return run_in_torchrun(job, progress)
    if not isinstance(nproc, int) or nproc < 1:
        raise TrainingError(f"nproc must be a positive integer, got {nproc!r}")
    if job.train.batch_size % nproc:
        raise TrainingError(f"batch_size={job.train.batch_size} must be divisible by nproc={nproc}")
    if nproc > 1:
        return _spawn(_ddp_worker, (nproc, _free_port(), job), nproc, progress, expected=1)
    n = resolve_workers(workers, len(job.configs), job.train.steps)
    if n > 1:
        import torch.multiprocessing as mp

        taken = mp.get_context("spawn").Value("i", 0)
        runs = _spawn(_variant_worker, (n, job, taken), n, progress, expected=n)
        return {v: runs[v] for v in job.configs}
    return _run_job(job, progress=progress)


#: ``workers="auto"`` starts processes only from this many steps in total (below, starting them costs more).
AUTO_WORKERS_MIN_STEPS = 200


def resolve_workers(workers: int | str, variants: int, steps: int) -> int:
    """Processes that train variants side by side.

    ``"auto"``: one per CPU core, at most one per variant, and only when the comparison has at least
    :data:`AUTO_WORKERS_MIN_STEPS` steps in total; an integer is used as given (at most one per variant).
    """
    if workers == "auto":
        if variants * steps < AUTO_WORKERS_MIN_STEPS:
            return 1
        return max(1, min(variants, os.cpu_count() or 1))
    if not isinstance(workers, int) or workers < 1:
        raise TrainingError(f"workers must be a positive integer or 'auto', got {workers!r}")
    return min(workers, variants)


def in_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def prepare(variants: Sequence[str] = DEFAULT_VARIANTS, depth: int = 20, steps: int = 300,
            dataset: str | DataSplit = "digits", seed: int = 0, store: RunStore | str | os.PathLike[str] | None = None,
            *, width: int = 16, activation: str = "relu", init: str = "default", lr: float = 0.01,
            optimizer: str = "sgd", momentum: float = 0.9, batch_size: int = 64, eval_every: int = 25,
            data_root: str | os.PathLike[str] | None = None, download: bool = False,
            data_options: Mapping[str, Any] | None = None, device: str | None = "cpu", kernels: Any = "auto",
            group: str | None = None) -> _Job:
    """Validate every setting and load the data (in this process, so errors come before any training)."""
    variants = list(variants)
    if not variants:
        raise TrainingError("choose at least one variant")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise TrainingError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if len(set(variants)) != len(variants):
        raise TrainingError(f"each variant may appear once; got {variants}")
    train = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
                        eval_every=eval_every)
    data = dataset if isinstance(dataset, DataSplit) else load_dataset(
        dataset, root=data_root, seed=seed, download=download, **dict(data_options or {}))
    configs = {v: variant_config(v, depth=depth, width=width, activation=activation, init=init, dims=data.dims,
                                 in_channels=data.in_channels, num_classes=data.num_classes,
                                 input_size=data.input_size, pool_size=min(4, data.input_size))
               for v in variants}
    root = store.root if isinstance(store, RunStore) else (store if store is not None else "runs")
    return _Job(configs, train, data, int(seed), os.fspath(root), group or new_group_id(), device, kernels)


def compare(variants: Sequence[str] = DEFAULT_VARIANTS, depth: int = 20, steps: int = 300,
            dataset: str | DataSplit = "digits", seed: int = 0, store: RunStore | str | os.PathLike[str] | None = None,
            *, nproc: int = 1, workers: int | str = "auto", progress: ProgressCallback | None = None,
            **options: Any) -> dict[str, str]:
    """Train CNN variants under identical conditions and record each with the gradient monitor.

    Every variant gets the same data, data order, seed (so the same initial weights for the shared parts),
    depth and optimiser configuration; the runs share a ``group`` id in their metadata. Each step records
    the loss, the batch accuracy (``train_accuracy``), the held-out accuracy every ``eval_every`` steps
    (``accuracy``, NaN in between), every per-layer statistic and kernel snapshots of the first, middle and
    last conv layer. A variant whose loss becomes NaN/Inf stops there; its run is kept, tagged
    ``diverged``, and the monitor's metadata (``first_nonfinite``) names the step and layer where it began.
    The final weights are saved as ``<run dir>/model.pt`` (see :func:`diagnostics.experiments.models.load_project_checkpoint`).

    Example::

        runs = dx.compare(variants=["plain", "batchnorm", "residual", "residual+batchnorm"], depth=20,
                          steps=300, dataset="digits", seed=0, store=dx.RunStore("runs"))

    Args:
        variants: Names from :data:`diagnostics.experiments.models.VARIANTS`.
        depth: Conv layers per network (2–100).
        steps: Optimiser steps per variant.
        dataset: A name from :data:`diagnostics.experiments.data.DATASETS` or a loaded :class:`~diagnostics.experiments.data.DataSplit`.
        seed: Seed of the split, the data order and the initial weights.
        store: The run store (or its directory; default ``./runs``).
        nproc: Processes for DistributedDataParallel (gloo on CPU, nccl on GPU). Under ``torchrun`` the
            processes already exist: call with the default and the launcher's group is used.
        workers: Without DDP, train the variants side by side in this many spawned processes (with
            ``cpu_count // workers`` threads each); ``"auto"`` uses one per CPU core, at most one per variant,
            from :data:`AUTO_WORKERS_MIN_STEPS` steps in total; ``1`` trains them one after the other in this
            process. The same call gives the same numbers every time; between ``workers`` settings they can
            differ by float rounding (kernels summed over another number of threads), which grows over steps.
        progress: Called with a :class:`Progress` after every step of every variant (in this process).
        **options: ``width``, ``activation``, ``init``, ``lr``, ``optimizer``, ``momentum``, ``batch_size``,
            ``eval_every``, ``data_root``, ``download``, ``data_options``, ``device`` (``"cpu"``, ``"cuda"`` or
            ``"auto"``), ``kernels``, ``group``.

    Returns:
        ``{variant: run_id}`` in the order of ``variants`` (on every rank under torchrun; rank 0 wrote them).
    """
    job = prepare(variants, depth, steps, dataset, seed, store, **options)
    return _execute(job, nproc, workers, progress)


def run_in_torchrun(job: _Job, progress: ProgressCallback | None = None) -> dict[str, str]:
    """Train ``job`` as one rank of a ``torchrun`` launch (env:// rendezvous); progress is reported on rank 0.

    The group id must be the same on every rank: rank 0's id is broadcast to the others.
    """
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = _resolve_device(job.device, local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(_backend(device), init_method="env://")
    try:
        shared = [job.group]
        dist.broadcast_object_list(shared, src=0)
        job = replace(job, group=shared[0])
        runs = _run_job(job, rank=rank, world=world, local_rank=local_rank,
                        progress=progress if rank == 0 else None)
        shared = [runs]
        dist.broadcast_object_list(shared, src=0)
        if owns_group:
            dist.barrier()              # as in _ddp_worker: no rank tears the group down while another still uses it
        return shared[0]
    finally:
        if owns_group:
            dist.destroy_process_group()


# --- a comparison in a background thread (for the dashboard) ----------------------------------------------------

class ComparisonJob:
    """Runs :func:`compare` in a worker thread and keeps its progress, so a page can poll it.

    Example::

        job = ComparisonJob(store="runs", variants=["plain", "residual"], depth=20, steps=300)
        job.start()
        while not job.finished:
            print(job.fractions())

    Args:
        **kwargs: The arguments of :func:`compare` (``store``, ``variants``, ``depth``, ..., ``nproc``,
            ``workers``) except ``progress``. Settings are validated and the data loaded here, so a bad setting
            raises before any thread starts.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = dict(kwargs)
        self._job = prepare(**{k: v for k, v in kwargs.items() if k not in ("nproc", "workers", "progress")})
        self.group = self._job.group
        self.variants = list(self._job.configs)
        self.steps = self._job.train.steps
        self._lock = threading.Lock()
        self._latest: dict[str, Progress] = {}
        self._thread = threading.Thread(target=self._target, name=f"compare-{self.group}", daemon=True)
        self.result: dict[str, str] | None = None
        self.error: str | None = None

    def start(self) -> ComparisonJob:
        """Start training in the background; returns ``self``."""
        self._thread.start()
        return self

    def _target(self) -> None:
        try:
            self.result = _execute(self._job, self._kwargs.get("nproc", 1), self._kwargs.get("workers", "auto"),
                                   self._record)
        except DiagnosticsError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported to the page instead of dying silently in a thread
            self.error = f"{type(exc).__name__}: {exc}"

    def _record(self, update: Progress) -> None:
        with self._lock:
            self._latest[update.variant] = update

    @property
    def finished(self) -> bool:
        """Whether the worker has ended (with a result or an error)."""
        return self._thread.ident is not None and not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (or ``timeout`` seconds); returns :attr:`finished`."""
        self._thread.join(timeout)
        return self.finished

    def latest(self) -> dict[str, Progress]:
        """The last progress report of each variant that has started."""
        with self._lock:
            return dict(self._latest)

    def fractions(self) -> dict[str, float]:
        """Share of steps done per variant (1.0 once a variant finished, also early by divergence)."""
        latest = self.latest()
        out = {}
        for variant in self.variants:
            p = latest.get(variant)
            out[variant] = 0.0 if p is None else (1.0 if p.done or p.diverged else p.step / max(1, p.steps))
        return out
