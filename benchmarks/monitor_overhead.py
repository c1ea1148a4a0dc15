"""Overhead of GradientMonitor on a torchvision resnet18 SGD step (CPU), measured side by side.

Each configuration is timed in alternation with the un-monitored baseline: one block of steps with the monitor,
one without, repeated; the printed ratio is the median of the per-pair ratios, with the spread (min-max).

Configurations: all statistics (every step, ``every=10``, and with PyTorch reductions only, ``fused=False``, for
comparison with the default fused one-pass kernels of ``diagnostics.native``); the weight-gradient statistics
alone (``activations=False, weight_norms=False``); weight gradients and weight norms (``activations=False``).
The main ones also with ``optimizer=`` (update ratios: a copy of the weights before each recorded optimizer step;
the optimizer keeps weight norms on, since the ratio divides by them).

Run: .venv/bin/python benchmarks/monitor_overhead.py [--pairs 7] [--block 10] [--only "weight"]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import diagnostics as dx  # noqa: E402
from diagnostics.recording import native  # noqa: E402

TARGETS = {"all statistics, every step": 1.20, "all statistics, every step, optimizer=": None,
           "all statistics, every step, fused=False": None, "weight-gradient statistics, optimizer=": None,
           "all statistics, every=10, optimizer=": None,
           "weight-gradient statistics alone": 1.10, "weight gradients and weight norms": None,
           "all statistics, every=10": 1.05}


def make(seed: int = 0):
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(16, 3, 64, 64)
    y = torch.randint(0, 10, (16,))
    return model, opt, x, y


def train_block(model, opt, x, y, steps: int, mon=None) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if mon is not None:
            mon.step(loss=loss)
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - start


def measure(name: str, options: dict, pairs: int, block: int, store: dx.RunStore, baseline) -> None:
    """Alternate blocks of monitored steps with blocks of the same steps on an un-hooked twin model."""
    model, opt, x, y = make()
    base_model, base_opt = baseline
    train_block(model, opt, x, y, 3)                          # warm-up
    options = dict(options)
    if options.pop("with_optimizer", False):
        options["optimizer"] = opt
    ratios, monitored, own = [], [], []
    with dx.GradientMonitor(model, store=store, run_name=f"bench-{name}", **options) as mon:
        train_block(model, opt, x, y, 2, mon)
        for _ in range(pairs):
            t_mon = train_block(model, opt, x, y, block, mon)
            t_base = train_block(base_model, base_opt, x, y, block)
            ratios.append(t_mon / t_base)
            monitored.append(t_mon / block)
            own.append((t_mon - t_base) / block)
    med = statistics.median(ratios)
    target = TARGETS.get(name)
    verdict = "" if target is None else f"  target <= {target:.2f}: {'met' if med <= target else 'NOT met'}"
    print(f"{name:42s} ratio {med:5.3f}  (spread {min(ratios):.3f}-{max(ratios):.3f}; "
          f"{statistics.median(monitored) * 1e3:6.1f} ms/step monitored, monitor's own time "
          f"{statistics.median(own) * 1e3:5.1f} ms/step){verdict}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--only", default="", help="run only the configurations whose name contains this text")
    args = parser.parse_args()
    baseline = make(seed=1)[:2]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, resnet18, batch 16, 3x64x64, SGD; "
          f"reductions: {native.status()}")
    with tempfile.TemporaryDirectory() as tmp:
        store = dx.RunStore(Path(tmp) / "runs")
        configs = {
            "all statistics, every step": {},
            "all statistics, every step, optimizer=": {"with_optimizer": True},
            "all statistics, every step, fused=False": {"fused": False},
            "weight-gradient statistics alone": {"activations": False, "weight_norms": False},
            "weight-gradient statistics, optimizer=": {"activations": False, "weight_norms": False,
                                                       "with_optimizer": True},
            "weight gradients and weight norms": {"activations": False},
            "all statistics, every=10": {"every": 10},
            "all statistics, every=10, optimizer=": {"every": 10, "with_optimizer": True},
        }
        for name, options in configs.items():
            if args.only not in name:
                continue
            measure(name, options, args.pairs, args.block, store, baseline)
