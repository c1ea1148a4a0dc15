"""Starting a comparison: in this process, one process per variant, under DDP, or inside torchrun.

:func:`compare` is the public entry point (``dx.compare``); :func:`prepare` validates the settings and loads
the data before anything starts, so a bad setting raises at once.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_module
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ComputeLimitError, DistributedTrainingError, TrainingError
from ..store import RunStore
from .data import DataSplit, load_dataset
from .models import VARIANTS, variant_config
from .training import (DEFAULT_VARIANTS, Job, ProgressCallback, TrainConfig, backend, new_group_id,
                       resolve_device, run_job)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, job: Job, events: Any) -> None:
    """Entry point of a DDP process: join the group, train every variant, rank 0 reports through ``events``."""
    device = resolve_device(job.device, rank)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend(device), init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        runs = run_job(job, rank=rank, world=world, local_rank=rank,
                        progress=(lambda p: events.put(("progress", p))) if rank == 0 else None)
        if rank == 0:
            events.put(("result", runs))
        # Every rank finishes its collectives before any tears the group down: tearing down early aborted
        # a rank in gloo ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


#: The error message of a cancelled comparison.
CANCELLED = "the comparison was cancelled"


def _variant_worker(rank: int, workers: int, job: Job, taken: Any, stop: Any, events: Any) -> None:
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
        report = _stoppable(lambda p: events.put(("progress", p)), stop)
        runs.update(run_job(job, local_rank=rank, only=[variants[index]], progress=report))
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


def _end(processes: list) -> None:
    """Terminate processes (SIGTERM, then SIGKILL for any still alive after a second) and reap them."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + 1.0
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def _spawn(target: Callable[..., None], args: tuple, nprocs: int, progress: ProgressCallback | None,
           expected: int, stop: threading.Event | None = None, shared_stop: Any = None) -> dict[str, str]:
    """Start ``nprocs`` spawned processes running ``target(rank, *args, events)``; relay progress, merge results.

    When ``stop`` is set, ``shared_stop`` (a process-shared event the workers watch) is set too; without one
    (DDP ranks, which cannot stop one by one in the middle of a collective) every process is terminated.
    """
    import torch.multiprocessing as mp

    events = mp.get_context("spawn").Queue()
    with _main_module_hidden():
        context = mp.start_processes(target, args=(*args, events), nprocs=nprocs, join=False,
                                     start_method="spawn")
    results: list[dict[str, str]] = []

    def drain(budget: float = 0.2) -> None:
        end = time.monotonic() + budget               # bounded, so that a flood of reports cannot delay a cancel
        while time.monotonic() < end:
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
            if stop is not None and stop.is_set():
                if shared_stop is None:
                    _end(context.processes)
                    raise ComputeLimitError(CANCELLED)
                shared_stop.set()
            if context.join(timeout=0.1):
                break
        drain(float("inf"))                           # every report and result the processes left
    except mp.ProcessRaisedException as exc:
        if shared_stop is not None and shared_stop.is_set():
            raise ComputeLimitError(CANCELLED) from None
        raise DistributedTrainingError(f"a training process failed:\n{exc}") from None
    except mp.ProcessExitedException as exc:
        raise DistributedTrainingError(f"a training process died ({exc})") from None
    if len(results) != expected:
        raise DistributedTrainingError("the training processes ended without sending all their results")
    return {k: v for r in results for k, v in r.items()}


def execute(job: Job, nproc: int, workers: int | str, progress: ProgressCallback | None,
            stop: threading.Event | None = None) -> dict[str, str]:
    """Run a prepared job: under torchrun, as ``nproc`` DDP processes, or variants in ``workers`` processes.

    Setting ``stop`` cancels it at the next training step of every variant (``ComputeLimitError``); the
    runs keep the steps recorded so far. DDP processes are terminated together (their last unflushed steps
    are lost), since one rank cannot leave in the middle of a collective.
    """
    if in_torchrun():
        return run_in_torchrun(job, progress)
    if not isinstance(nproc, int) or nproc < 1:
        raise TrainingError(f"nproc must be a positive integer, got {nproc!r}")
    if job.train.batch_size % nproc:
        raise TrainingError(f"batch_size={job.train.batch_size} must be divisible by nproc={nproc}")
    if nproc > 1:
        return _spawn(_ddp_worker, (nproc, _free_port(), job), nproc, progress, expected=1, stop=stop)
    n = resolve_workers(workers, len(job.configs), job.train.steps)
    if n > 1:
        import torch.multiprocessing as mp

        context = mp.get_context("spawn")
        taken, shared_stop = context.Value("i", 0), context.Event()
        runs = _spawn(_variant_worker, (n, job, taken, shared_stop), n, progress, expected=n, stop=stop,
                      shared_stop=shared_stop)
        return {v: runs[v] for v in job.configs}
    return run_job(job, progress=_stoppable(progress, stop))


def _stoppable(progress: ProgressCallback | None, stop: Any) -> ProgressCallback | None:
    """``progress`` that raises once ``stop`` (a thread's or a process-shared event) is set: the training that
    reports to it stops at its next step."""
    if stop is None:
        return progress

    def report(update: Any) -> None:
        if stop.is_set():
            raise ComputeLimitError(CANCELLED)
        if progress is not None:
            progress(update)
    return report


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


def run_labels(variants: Sequence[str] | Mapping[str, Mapping[str, Any]],
               depth: int | Sequence[int]) -> dict[str, tuple[str, dict[str, Any], int, Any]]:
    """Every run of a comparison: ``{label: (variant, overrides, depth, key)}``, in order.

    ``variants`` is a list of standard variant names, or ``{label: {"variant": name, **CNNConfig overrides}}``
    (e.g. ``{"xavier": {"variant": "plain", "init": "xavier"}}``) to compare other settings than the
    residual/batch-norm switches. With one ``depth`` the key of a run is its label; with a list of depths
    each label runs at each depth, labelled ``"<label> d<depth>"`` and keyed ``(label, depth)``.
    """
    if isinstance(variants, Mapping):
        named = {str(k): dict(v) for k, v in variants.items()}
    else:
        names = list(variants)
        if len(set(names)) != len(names):
            raise TrainingError(f"each variant may appear once; got {names}")
        named = {v: {"variant": v} for v in names}
    if not named:
        raise TrainingError("choose at least one variant")
    unknown = sorted({str(o.get("variant")) for o in named.values()} - set(VARIANTS))
    if unknown:
        raise TrainingError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    swept = not isinstance(depth, int)
    depths = list(depth) if swept else [depth]
    if not depths or not all(isinstance(d, int) and not isinstance(d, bool) for d in depths) \
            or len(set(depths)) != len(depths):
        raise TrainingError(f"depth must be an integer or a list of distinct integers, got {depth!r}")
    runs = {}
    for label, options in named.items():
        overrides = {k: v for k, v in options.items() if k != "variant"}
        for d in depths:
            runs[f"{label} d{d}" if swept else label] = (options["variant"], overrides, d,
                                                        (label, d) if swept else label)
    return runs


def prepare(variants: Sequence[str] | Mapping[str, Mapping[str, Any]] = DEFAULT_VARIANTS,
            depth: int | Sequence[int] = 20, steps: int = 300,
            dataset: str | DataSplit = "digits", seed: int = 0, store: RunStore | str | os.PathLike[str] | None = None,
            *, width: int = 16, activation: str = "relu", init: str = "default", lr: float = 0.01,
            optimizer: str = "sgd", momentum: float = 0.9, batch_size: int = 64, eval_every: int = 25,
            data_root: str | os.PathLike[str] | None = None, download: bool = False,
            data_options: Mapping[str, Any] | None = None, device: str | None = "cpu", kernels: Any = "auto",
            blocks: Any = "auto", group: str | None = None) -> Job:
    """Validate every setting and load the data (in this process, so errors come before any training)."""
    runs = run_labels(variants, depth)
    train = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
                        eval_every=eval_every)
    data = dataset if isinstance(dataset, DataSplit) else load_dataset(
        dataset, root=data_root, seed=seed, download=download, **dict(data_options or {}))
    shared = {"width": width, "activation": activation, "init": init}
    configs = {label: variant_config(variant, **{**shared, **overrides, "depth": d, "dims": data.dims,
                                                 "in_channels": data.in_channels, "num_classes": data.num_classes,
                                                 "input_size": data.input_size, "pool_size": min(4, data.input_size)})
               for label, (variant, overrides, d, _) in runs.items()}
    root = store.root if isinstance(store, RunStore) else (store if store is not None else "runs")
    return Job(configs, train, data, int(seed), os.fspath(root), group or new_group_id(), device, kernels,
               keys={label: key for label, (*_, key) in runs.items()}, blocks=blocks)


def compare(variants: Sequence[str] | Mapping[str, Mapping[str, Any]] = DEFAULT_VARIANTS,
            depth: int | Sequence[int] = 20, steps: int = 300,
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
    The final weights are saved as ``<run dir>/model.pt`` (see :func:`diagnostics.load_project_checkpoint`).

    Example::

        runs = dx.compare(variants=["plain", "batchnorm", "residual", "residual+batchnorm"], depth=20,
                          steps=300, dataset="digits", seed=0, store=dx.RunStore("runs"))

    A list of depths is a depth sweep: every variant at every depth, all runs in parallel as above, keyed
    ``(variant, depth)``::

        runs = dx.compare(variants=["plain", "residual"], depth=[5, 10, 20, 40], steps=300)
        runs[("plain", 40)]                                       # -> run id

    Args:
        variants: Names from :data:`diagnostics.experiments.models.VARIANTS`, or ``{label: {"variant": name,
            **CNNConfig overrides}}`` to compare other settings (e.g. ``init`` or ``activation``, as the
            presets of :mod:`diagnostics.experiments.presets` do).
        depth: Conv layers per network (2–100), or a list of depths (a sweep).
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
            ``"auto"``), ``kernels``, ``blocks`` (backward gain per block, default ``"auto"``; ``None`` turns it
            off), ``group``.

    Returns:
        ``{variant: run_id}`` in the order of ``variants``, or ``{(variant, depth): run_id}`` for a list of
        depths (on every rank under torchrun; rank 0 wrote them).
    """
    job = prepare(variants, depth, steps, dataset, seed, store, **options)
    runs = execute(job, nproc, workers, progress)
    return {job.keys.get(label, label): runs[label] for label in job.configs if label in runs}


def run_in_torchrun(job: Job, progress: ProgressCallback | None = None) -> dict[str, str]:
    """Train ``job`` as one rank of a ``torchrun`` launch (env:// rendezvous); progress is reported on rank 0.

    The group id must be the same on every rank: rank 0's id is broadcast to the others.
    """
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(job.device, local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend(device), init_method="env://")
    try:
        shared = [job.group]
        dist.broadcast_object_list(shared, src=0)
        job = replace(job, group=shared[0])
        runs = run_job(job, rank=rank, world=world, local_rank=local_rank,
                        progress=progress if rank == 0 else None)
        shared = [runs]
        dist.broadcast_object_list(shared, src=0)
        if owns_group:
            dist.barrier()              # as in _ddp_worker: no rank tears the group down while another still uses it
        return shared[0]
    finally:
        if owns_group:
            dist.destroy_process_group()


