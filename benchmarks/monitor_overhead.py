"""Overhead of GradientMonitor on a training step (CPU), measured side by side against an un-monitored twin.

Each configuration is timed in alternation with the un-monitored baseline: one block of steps with the monitor,
one without, repeated; the printed ratio is the median of the per-pair ratios, with the spread (min-max).

Workloads and configurations:

* resnet18 (batch 16, 3x64x64, SGD): all statistics (every step, ``every=10``, and with PyTorch reductions only,
  ``fused=False``, for comparison with the fused C++ reductions of ``diagnostics.recording.native``); the
  weight-gradient statistics alone (``activations=False, weight_norms=False``); weight gradients and weight
  norms (``activations=False``). The main ones also with ``optimizer=`` (update ratios: a copy of the weights
  before each recorded optimizer step).
* the project's depth-20 residual CNN with batch norm (batch 64 of 1x8x8, 62 hooked layers): a small model,
  where the per-layer cost of the hooks weighs most.
* per-unit activity (``unit_activity=True``, the ``dead_units`` column; off by default) on both models.
* two floors on the depth-20 CNN, without the monitor: a forward hook on every leaf that only registers an
  output-gradient hook that does nothing (what Python hooks cost before any statistic), and the monitor's C++
  reductions alone (every leaf's output and output gradient reduced, nothing else: the floor of any design that
  reads every element of them on every step).
* resnet18 compiled with Inductor (``torch.compile``), against the compiled twin: weight statistics (the
  compiled steps carry no hook) and all statistics (every ``eager_every``-th recorded step runs eagerly).

``--phases`` instead splits the depth-20 CNN's monitor time into forward, backward and ``step()``, next to the
same split of the floor of the C++ reductions alone.

Run: .venv/bin/python benchmarks/monitor_overhead.py [--pairs 7] [--block 10] [--only "cnn"] [--phases]
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

#: configuration name -> (workload, monitor options, target ratio or None)
CONFIGS = {
    "all statistics, every step": ("resnet18", {}, 1.20),
    "all statistics, every step, optimizer=": ("resnet18", {"with_optimizer": True}, None),
    "all statistics, every step, fused=False": ("resnet18", {"fused": False}, None),
    "weight-gradient statistics alone": ("resnet18", {"activations": False, "weight_norms": False}, 1.10),
    "weight-gradient statistics, optimizer=": ("resnet18", {"activations": False, "weight_norms": False,
                                                            "with_optimizer": True}, None),
    "weight gradients and weight norms": ("resnet18", {"activations": False}, None),
    "all statistics, every=10": ("resnet18", {"every": 10}, 1.05),
    "all statistics, every=10, optimizer=": ("resnet18", {"every": 10, "with_optimizer": True}, None),
    "depth-20 cnn: all statistics, every step": ("cnn20", {}, 1.15),
    "depth-20 cnn: all statistics, fused=False": ("cnn20", {"fused": False}, None),
    "depth-20 cnn: all statistics + unit_activity": ("cnn20", {"unit_activity": True}, None),
    "depth-20 cnn: floor, empty hooks (no monitor)": ("cnn20", {"floor": True}, None),
    "depth-20 cnn: floor, C++ reductions alone (no monitor)": ("cnn20", {"floor": "reductions"}, None),
    "all statistics + unit_activity (dead_units)": ("resnet18", {"unit_activity": True}, None),
    "compiled resnet18: weight statistics": ("compiled", {"activations": False, "weight_norms": False}, 1.10),
    "compiled resnet18: all statistics, eager_every=10": ("compiled", {}, 1.25),
}


def make(workload: str, seed: int = 0):
    """(model to train, optimizer, x, y) of a workload; the model is compiled for "compiled"."""
    torch.manual_seed(seed)
    if workload == "cnn20":
        model = dx.build_cnn(dx.variant_config("residual+batchnorm", depth=20, width=16, in_channels=1),
                             seed=seed)
        x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    else:
        model = torchvision.models.resnet18(num_classes=10)
        x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if workload == "compiled":
        model = torch.compile(model)
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


class EmptyHooks:
    """The hooks a per-layer monitor needs, doing nothing: a forward hook per leaf and a gradient hook per output."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.handles = model, []

    def __enter__(self) -> "EmptyHooks":
        def on_grad(grad: torch.Tensor) -> None:
            return None

        def on_output(module, inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(on_grad)
        self.handles = [m.register_forward_hook(on_output) for m in self.model.modules() if not list(m.children())]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def step(self, loss=None) -> None:
        return None


class ReductionsAlone(EmptyHooks):
    """Only the monitor's C++ reductions: every leaf's output reduced in its forward hook and its output gradient
    in backward (``GradWatch.forward``), nothing else (no bookkeeping, no rows, no store): the floor of any
    design that reads every element of every hooked tensor on every step."""

    def __enter__(self) -> "ReductionsAlone":
        self.watch = native.kernels().GradWatch()
        self.step()
        leaves = [m for m in self.model.modules() if not list(m.children())]
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(leaves)]
        return self

    def _hook(self, layer: int):
        watch = self.watch

        def hook(module, inputs, output) -> None:
            watch.forward(output, layer, module.training)
        return hook

    def step(self, loss=None) -> None:
        self.watch.begin(0)
        self.watch.set_pass(0)


def measure(name: str, workload: str, options: dict, target: float | None, pairs: int, block: int,
            store: dx.RunStore, baselines: dict) -> None:
    """Alternate blocks of monitored steps with blocks of the same steps on an un-hooked twin model."""
    model, opt, x, y = make(workload)
    if workload not in baselines:
        base = make(workload, seed=1)
        train_block(*base, 3)                               # warm-up (and compile)
        baselines[workload] = base
    base_model, base_opt, _, _ = baselines[workload]
    train_block(model, opt, x, y, 3)                        # warm-up (and compile)
    options = dict(options)
    if options.pop("with_optimizer", False):
        options["optimizer"] = opt
    ratios, monitored, own = [], [], []
    floor = options.pop("floor", None)
    monitor = EmptyHooks(model) if floor is True else ReductionsAlone(model) if floor == "reductions" else \
        dx.GradientMonitor(model, store=store, run_name=f"bench-{workload}", **options)
    with monitor as mon:
        train_block(model, opt, x, y, 2, mon)
        for _ in range(pairs):
            t_mon = train_block(model, opt, x, y, block, mon)
            t_base = train_block(base_model, base_opt, x, y, block)
            ratios.append(t_mon / t_base)
            monitored.append(t_mon / block)
            own.append((t_mon - t_base) / block)
    med = statistics.median(ratios)
    verdict = "" if target is None else f"  target <= {target:.2f}: {'met' if med <= target else 'NOT met'}"
    print(f"{name:50s} ratio {med:5.3f}  (spread {min(ratios):.3f}-{max(ratios):.3f}; "
          f"{statistics.median(monitored) * 1e3:6.1f} ms/step monitored, monitor's own time "
          f"{statistics.median(own) * 1e3:5.1f} ms/step){verdict}", flush=True)


def phases(workload: str, blocks: int = 5, steps: int = 20) -> None:
    """Where the monitor's time goes on one workload: forward, backward and ``step()``, each against the
    un-monitored twin, next to the same split of the floor of the C++ reductions alone (medians of ``blocks``
    alternating blocks of ``steps`` steps)."""
    loss_fn = torch.nn.functional.cross_entropy

    def block(m, o, x, y, mon=None) -> tuple[float, float, float]:
        fwd = bwd = stp = 0.0
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = loss_fn(m(x), y)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            if mon is not None:
                mon.step(loss=loss)
            t3 = time.perf_counter()
            o.step()
            o.zero_grad()
            fwd, bwd, stp = fwd + t1 - t0, bwd + t2 - t1, stp + t3 - t2
        return fwd / steps * 1e3, bwd / steps * 1e3, stp / steps * 1e3

    base = make(workload, seed=1)
    block(*base)
    with tempfile.TemporaryDirectory() as tmp:
        monitored, floor = make(workload), make(workload)
        with dx.GradientMonitor(monitored[0], store=dx.RunStore(Path(tmp) / "runs")) as mon, \
                ReductionsAlone(floor[0]) as alone:
            runs = {"monitor": (monitored, mon), "floor, C++ reductions alone": (floor, alone)}
            for run, hooks in runs.values():
                block(*run, hooks)
            rows: dict[str, list[tuple[float, ...]]] = {name: [] for name in runs}
            for _ in range(blocks):
                for name, (run, hooks) in runs.items():
                    f, b, s = block(*run, hooks)
                    bf, bb, _ = block(*base)
                    rows[name].append((f - bf, b - bb, s, bf + bb))
    for name, values in rows.items():
        med = [statistics.median(r[i] for r in values) for i in range(4)]
        print(f"{workload} {name}: own time by phase (ms/step, medians of {blocks} alternating blocks): forward "
              f"+{med[0]:.2f}, backward +{med[1]:.2f}, step() {med[2]:.2f}; un-monitored forward+backward "
              f"{med[3]:.1f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--only", default="", help="run only the configurations whose name contains this text")
    parser.add_argument("--phases", action="store_true",
                        help="instead, time forward, backward and step() of the depth-20 CNN's monitor by phase, "
                             "next to the floor of the C++ reductions alone")
    args = parser.parse_args()
    if args.phases:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; reductions: {native.status()}")
        phases("cnn20")
        raise SystemExit(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; reductions: {native.status()}")
    baselines: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = dx.RunStore(Path(tmp) / "runs")
        for name, (workload, options, target) in CONFIGS.items():
            if args.only in name:
                measure(name, workload, options, target, args.pairs, args.block, store, baselines)
