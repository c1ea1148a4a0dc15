"""Cost of the default comparison: time per step with and without the monitor, and the 4-variant wall time.

Part 1, per variant (depth 20, width 16, digits, batch 64, SGD): blocks of steps with the monitor (as
``compare`` records: all statistics, optimizer=, kernel snapshots, a run store) alternate with blocks of the same
steps on an un-hooked twin; printed are both times per step and the median of the per-pair ratios (min-max).

With ``--blocks``, per variant also the cost of the backward gain per block (``blocks="auto"``, as comparisons
record it): blocks of steps with a monitor that records block gains alternate with blocks on a twin whose monitor
does not; printed is the median of the per-pair ratios (min-max).

Part 2: the wall time of ``dx.compare()`` with its defaults (4 variants, depth 20, 300 steps, digits), and with
``--serial`` also of the one-process run (``workers=1``). The load average is printed because other processes on
the machine slow every number down.

Run: .venv/bin/python benchmarks/compare.py [--pairs 5] [--block 10] [--serial] [--skip-steps] [--blocks]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import diagnostics as dx  # noqa: E402
from diagnostics.experiments.data import load_digits  # noqa: E402
from diagnostics.experiments.models import VARIANTS, build_cnn, variant_config  # noqa: E402
from diagnostics.experiments.training import TrainConfig, flush_denormals  # noqa: E402


def make(variant: str, data: dx.DataSplit):
    config = variant_config(variant, depth=20, width=16, in_channels=1, num_classes=10, input_size=8)
    model = build_cnn(config, seed=0)
    return model, TrainConfig().make_optimizer(model.parameters())


def train_block(model, opt, data: dx.DataSplit, steps: int, gen: torch.Generator, mon=None) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(data.y_train), (64,), generator=gen)       # (64,)
        logits = model(data.x_train[idx])                                      # (64, 10)
        loss = F.cross_entropy(logits, data.y_train[idx])
        loss.backward()
        if mon is not None:
            mon.step(loss=loss, accuracy=float("nan"), train_accuracy=0.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def per_step(variant: str, data: dx.DataSplit, store: dx.RunStore, pairs: int, block: int) -> None:
    model, opt = make(variant, data)
    twin, twin_opt = make(variant, data)
    gen = torch.Generator().manual_seed(0)
    train_block(twin, twin_opt, data, 3, gen)                                  # warm-up
    ratios, with_mon, without = [], [], []
    with dx.GradientMonitor(model, store=store, run_name=f"bench-{variant}", optimizer=opt, kernels="auto",
                            on_nonfinite="ignore") as mon:
        train_block(model, opt, data, 3, gen, mon)
        for _ in range(pairs):
            t_mon = train_block(model, opt, data, block, gen, mon)
            t_base = train_block(twin, twin_opt, data, block, gen)
            ratios.append(t_mon / t_base)
            with_mon.append(t_mon / block)
            without.append(t_base / block)
    print(f"{variant:20s} {statistics.median(without) * 1e3:7.1f} ms/step without  "
          f"{statistics.median(with_mon) * 1e3:7.1f} ms/step with the monitor  "
          f"ratio {statistics.median(ratios):5.2f} (spread {min(ratios):.2f}-{max(ratios):.2f})", flush=True)


def blocks_cost(variant: str, data: dx.DataSplit, store: dx.RunStore, pairs: int, block: int) -> None:
    model, opt = make(variant, data)
    twin, twin_opt = make(variant, data)
    gen = torch.Generator().manual_seed(0)
    ratios = []
    common = {"store": store, "kernels": "auto", "on_nonfinite": "ignore"}
    with dx.GradientMonitor(model, run_name=f"bench-{variant}-blocks", optimizer=opt, blocks="auto", **common) as mon, \
            dx.GradientMonitor(twin, run_name=f"bench-{variant}-no-blocks", optimizer=twin_opt, **common) as twin_mon:
        train_block(model, opt, data, 3, gen, mon)
        train_block(twin, twin_opt, data, 3, gen, twin_mon)
        for _ in range(pairs):
            ratios.append(train_block(model, opt, data, block, gen, mon)
                          / train_block(twin, twin_opt, data, block, gen, twin_mon))
    print(f"{variant:20s} blocks='auto' over the monitor without it: ratio {statistics.median(ratios):5.2f} "
          f"(spread {min(ratios):.2f}-{max(ratios):.2f})", flush=True)


def wall(store: dx.RunStore, workers: int | str) -> float:
    start = time.perf_counter()
    dx.compare(store=store, workers=workers)
    return time.perf_counter() - start


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--serial", action="store_true", help="also time the one-process run (workers=1)")
    parser.add_argument("--skip-steps", action="store_true", help="only the wall time of the comparison")
    parser.add_argument("--blocks", action="store_true", help="only the cost of blocks='auto' per variant")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}; depth 20, width 16, digits 8x8, batch 64, SGD lr 0.01")
    with tempfile.TemporaryDirectory() as tmp:
        store = dx.RunStore(Path(tmp) / "runs")
        if args.blocks:
            data = load_digits()
            with flush_denormals():
                for variant in VARIANTS:
                    blocks_cost(variant, data, store, args.pairs, args.block)
            sys.exit(0)
        if not args.skip_steps:
            data = load_digits()
            with flush_denormals():
                for variant in VARIANTS:
                    per_step(variant, data, store, args.pairs, args.block)
        seconds = wall(store, "auto")
        print(f"default 4-variant comparison (workers=auto): {seconds:.1f} s wall "
              f"(load average {os.getloadavg()[0]:.2f})", flush=True)
        if args.serial:
            seconds = wall(store, 1)
            print(f"default 4-variant comparison (workers=1, one process): {seconds:.1f} s wall "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
