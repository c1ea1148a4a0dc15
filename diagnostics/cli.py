"""Command-line interface: ``python -m diagnostics runs|export|findings|compare|check ...``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .errors import CheckpointError, DiagnosticsError
from .views.export import FORMATS, export_run
from .store import RunStore


def _human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def cmd_runs(args: argparse.Namespace) -> int:
    runs = RunStore(args.store).runs()
    if runs.empty:
        print(f"No runs in {args.store}. Record one with diagnostics.GradientMonitor (see README.md).")
        return 0
    table = runs[["run", "name", "status", "model", "steps", "layers"]].copy()
    table["created"] = runs["created"].dt.strftime("%Y-%m-%d %H:%M")
    table["size"] = runs["size_bytes"].map(_human_size)
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 60):
        print(table.to_string(index=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    files = export_run(RunStore(args.store), args.run, args.format, args.out)
    for path in files:
        print(path)
    if args.format == "tensorboard":
        print(f"Open with: tensorboard --logdir {files[0].parent}")
    return 0


def cmd_findings(args: argparse.Namespace) -> int:
    """Print a run's findings, most severe first; exit 1 when one is at least as severe as ``--fail-on``."""
    import json

    from .views.diagnosis import SEVERITIES, findings

    found = findings(args.run, store=RunStore(args.store))
    if args.json:
        print(json.dumps([f.as_dict() for f in found], indent=2, default=str))
    elif not found:
        print(f"Run {args.run}: no findings.")
    for f in [] if args.json else found:
        print(f"[{f.severity}] {f.kind}{f' ({f.detail})' if f.detail else ''}: {f.message}\n    Fix: {f.fix}")
    failing = [f for f in found if SEVERITIES.index(f.severity) <= SEVERITIES.index(args.fail_on)]
    if failing:
        print(f"{len(failing)} finding(s) at or above {args.fail_on}.", file=sys.stderr)
    return 1 if failing else 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Train the variants with a tqdm progress bar, then print the summary table (rank 0 only under DDP)."""
    from tqdm import tqdm

    from .experiments.comparison import load_comparison
    from .experiments.launch import compare, in_torchrun
    from .views.training_comparison import summarize

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        depths = [int(d) for d in args.depth.split(",") if d.strip()]
    except ValueError:
        return _check_error(f"--depth must be an integer or comma-separated integers (a sweep), got {args.depth!r}")
    depth = depths[0] if len(depths) == 1 else depths
    rank0 = not in_torchrun() or os.environ.get("RANK") == "0"
    bar = tqdm(total=len(variants) * max(1, len(depths)) * args.steps, unit="step", disable=not rank0 or args.quiet, dynamic_ncols=True)
    seen: dict[str, int] = {}

    def progress(p) -> None:
        bar.set_description(f"{p.variant} ({p.index + 1}/{p.variants})")
        done = p.steps if (p.done or p.diverged) else p.step
        bar.update(done - seen.get(p.variant, 0))
        seen[p.variant] = done
        bar.set_postfix(loss=f"{p.loss:.3g}", acc=f"{p.accuracy:.0%}" if p.accuracy == p.accuracy else "-")

    store = RunStore(args.store)
    options = {"width": args.width, "activation": args.activation, "init": args.init, "lr": args.lr,
               "optimizer": args.optimizer, "batch_size": args.batch_size, "eval_every": args.eval_every,
               "data_root": args.data_root, "download": args.download, "device": args.device}
    try:
        runs = compare(variants, depth, args.steps, args.dataset, args.seed, store, nproc=args.nproc,
                       progress=progress, **options)
    finally:
        bar.close()
    if not rank0:
        return 0
    by_label = {store.meta(run)["variant"]: run for run in runs.values()}          # "plain d5" in a sweep
    summary = summarize(load_comparison(store, by_label))
    table = pd.DataFrame({
        "variant": summary["variant"],
        "final loss": summary["final_loss"].map(lambda x: f"{x:.4f}"),
        "accuracy": summary["accuracy"].map(lambda x: "-" if x != x else f"{x:.1%}"),
        "first/last grad ratio": summary["ratio_median"].map(lambda x: f"{x:.2e}"),
        "diverged at": summary["diverged_step"].map(lambda x: "-" if pd.isna(x) else f"step {int(x)}"),
        "run": summary["run"],
    })
    group = store.meta(next(iter(runs.values())))["group"]
    print(f"\nComparison {group} ({args.dataset}, depth {args.depth}, {args.steps} steps) in {store.root}")
    print("final loss: mean of the last 10 steps; accuracy: held-out split at the last step; "
          "first/last grad ratio: median over steps of ||dL/dW|| of the first over the last conv layer")
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.to_string(index=False))
    return 0


def _check_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _model_for_check(name_or_path: str, input_size: int, seed: int):
    """``(model, example input, description)`` for ``check --model``: a checkpoint file or a torchvision name."""
    import torch

    from .checkpoints.architecture import rebuild
    from .checkpoints.loading import load_checkpoint
    from .views.catalogue import make_input

    path = Path(name_or_path).expanduser()
    looks_like_path = path.suffix in (".pt", ".pth", ".ckpt", ".bin", ".safetensors") or os.sep in name_or_path
    if path.is_file() or looks_like_path:
        built = rebuild(load_checkpoint(path))  # CheckpointError for a missing or unloadable file
        shape = built.input_shape if built.config is not None else (3, input_size, input_size)
        return built.model, make_input((2, *shape), seed), f"{built.architecture} from {path.name}"
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name_or_path.lower() not in names:
        raise CheckpointError(
            f"--model {name_or_path!r} is neither a checkpoint file nor a torchvision classification model name "
            f"(e.g. resnet18, vgg11_bn, mobilenet_v2; all: {len(names)} names from "
            "torchvision.models.list_models())")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name_or_path.lower(), weights=None)
    return model, make_input((2, 3, input_size, input_size), seed), f"torchvision {name_or_path.lower()} (weights=None)"


def _print_check_report(report: pd.DataFrame, keys: Sequence[str]) -> None:
    table = report[[*keys, "tensor", "reference", "max_abs_err", "max_rel_err", "status"]].copy()
    for column in ("max_abs_err", "max_rel_err"):
        table[column] = table[column].map(lambda x: "-" if x != x else f"{x:.2e}")
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_colwidth", 70):
        print(table.to_string(index=False))
    notes = report[report["status"] != "pass"]
    if not notes.empty:
        print("\nNot passed:")
        for row in notes.itertuples():
            where = " ".join(str(getattr(row, key)) for key in keys)
            what = f" {row.tensor} vs {row.reference}" if row.tensor else ""
            print(f"  [{row.status}] {where}{what}: {row.reason}")


def cmd_check(args: argparse.Namespace) -> int:
    """Check the manual backward rules against autograd (and finite differences); 1 on any failure, 2 on errors."""
    from . import manual
    from .views.catalogue import single_thread
    from .views.checks import EXAMPLES, check_examples

    module = args.module.lower() if args.module else ("all" if args.model is None else None)
    if module is not None and module != "all" and module not in EXAMPLES:
        return _check_error(f"unknown --module {args.module!r}; choose one of {', '.join([*EXAMPLES, 'all'])}")
    reports = []
    try:
        if module is not None:
            keys = list(EXAMPLES) if module == "all" else [module]
            report = check_examples(keys, impl=args.impl, seed=args.seed)
            print(f"Manual backward rules vs autograd and finite differences (float64, impl={args.impl}, "
                  f"seed={args.seed}):")
            _print_check_report(report, ["layer", "config"])
            reports.append(report)
        if args.model is not None:
            model, example, description = _model_for_check(args.model, args.input_size, args.seed)
            with single_thread():
                report = manual.check_model(model, example, impl=args.impl, seed=args.seed)
            print(f"\nEvery layer of {description}, on an input of shape {tuple(example.shape)}, vs autograd "
                  f"(float64, impl={args.impl}):")
            _print_check_report(report, ["layer", "call"])
            reports.append(report)
    except DiagnosticsError as exc:
        return _check_error(str(exc))
    statuses = pd.concat([r["status"] for r in reports], ignore_index=True)
    counts = ", ".join(f"{n} {status}" for status, n in statuses.value_counts().items())
    failed = int((statuses == "fail").sum())
    print(f"\n{len(statuses)} comparisons: {counts}.")
    if failed:
        print(f"FAILED: {failed} comparisons exceed their tolerance.", file=sys.stderr)
        return 1
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build the fused reductions' C++ extension now (once per version), so no training step waits for it."""
    from .recording import native

    started = time.perf_counter()
    ready = native.kernels() is not None
    print(f"{native.status()} ({time.perf_counter() - started:.1f} s; cache: {native.cache_dir()})")
    return 0 if ready else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diagnostics",
        description="Gradient Flow Diagnostics: record, prove and show how gradients flow through PyTorch "
                    "models. The dashboard: streamlit run app.py")
    sub = parser.add_subparsers(dest="command", required=True)

    runs = sub.add_parser("runs", help="list the runs in a store")
    runs.add_argument("--store", default="runs", help="run store directory (default: ./runs)")
    runs.set_defaults(func=cmd_runs)

    export = sub.add_parser("export", help="export a run as CSV, Parquet or TensorBoard event files")
    export.add_argument("run", help="run id (see `runs`)")
    export.add_argument("--format", choices=FORMATS, default="csv")
    export.add_argument("--out", default=None, help="output directory (default: exports/<run>)")
    export.add_argument("--store", default="runs", help="run store directory (default: ./runs)")
    export.set_defaults(func=cmd_export)

    found = sub.add_parser("findings", help="a run's findings (vanishing, exploding, NaN, dead units, updates)",
                           description="Print the plain-language findings of one run, each with its fix, most "
                                       "severe first; exit 1 when one is at least as severe as --fail-on (for CI), "
                                       "2 on errors.")
    found.add_argument("run", help="run id (see `runs`)")
    found.add_argument("--fail-on", choices=("problem", "warning"), default="problem",
                       help="exit 1 on a finding of this severity or worse (default: problem)")
    found.add_argument("--json", action="store_true", help="print the findings as JSON")
    found.add_argument("--store", default="runs", help="run store directory (default: ./runs)")
    found.set_defaults(func=cmd_findings)

    from .experiments.data import DATASETS
    from .experiments.models import ACTIVATIONS, INITS, VARIANTS
    from .experiments.training import OPTIMIZERS, TrainConfig

    defaults = TrainConfig()
    comp = sub.add_parser("compare", help="train CNN variants under identical conditions and compare their "
                                          "gradient flow")
    comp.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated, from {', '.join(VARIANTS)} (default: all four)")
    comp.add_argument("--depth", default="20", help="conv layers per network, 2-100 (default: 20); a "
                                                    "comma-separated list runs a depth sweep, e.g. 5,10,20,40")
    comp.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps per variant")
    comp.add_argument("--dataset", default="digits", choices=DATASETS, help="default: digits (bundled, offline)")
    comp.add_argument("--data-root", default=None, help="folder of an image-folder or torchvision dataset")
    comp.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    comp.add_argument("--width", type=int, default=16, help="channels per conv layer (default: 16)")
    comp.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS))
    comp.add_argument("--init", default="default", choices=INITS)
    comp.add_argument("--lr", type=float, default=defaults.lr, help=f"learning rate (default: {defaults.lr})")
    comp.add_argument("--optimizer", default=defaults.optimizer, choices=OPTIMIZERS)
    comp.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch size")
    comp.add_argument("--eval-every", type=int, default=defaults.eval_every, help="held-out accuracy interval")
    comp.add_argument("--seed", type=int, default=0)
    comp.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    comp.add_argument("--nproc", type=int, default=1,
                      help="processes for DistributedDataParallel (gloo on CPU); or launch with torchrun")
    comp.add_argument("--store", default="runs", help="run store directory (default: ./runs)")
    comp.add_argument("--quiet", action="store_true", help="no progress bar")
    comp.set_defaults(func=cmd_compare)

    check = sub.add_parser(
        "check", help="check the hand-written backward passes against autograd and finite differences",
        description="Compare the manual backward rules (diagnostics.manual) with autograd and central finite "
                    "differences in float64 and print the report; exit 1 if any comparison fails, 2 on errors. "
                    "Without --module or --model, every layer type is checked.")
    check.add_argument("--module", default=None, metavar="TYPE",
                       help="a layer type: conv2d, conv1d, convtranspose2d, maxpool1d, maxpool2d, avgpool1d, "
                            "avgpool2d, adaptiveavgpool1d, adaptiveavgpool2d, adaptivemaxpool2d, relu, tanh, "
                            "sigmoid, linear, batchnorm1d, batchnorm2d, flatten, identity, or all (checked on a "
                            "few representative configurations each)")
    check.add_argument("--model", default=None, metavar="PATH_OR_NAME",
                       help="a checkpoint or state_dict file (this project's CNNs or a torchvision classifier), "
                            "or a torchvision model name such as resnet18 (built with weights=None): every "
                            "layer is checked on the inputs it really sees")
    check.add_argument("--impl", default="fast", choices=("fast", "reference"),
                       help="fast: vectorised (default); reference: the explicit loops")
    check.add_argument("--seed", type=int, default=0, help="seeds weights, inputs and sampled coordinates")
    check.add_argument("--input-size", type=int, default=32,
                       help="H = W of the 3-channel input fed to a torchvision model (default: 32)")
    check.set_defaults(func=cmd_check)

    build = sub.add_parser("build", help="build the fused CPU reductions (a C++ extension) ahead of training",
                           description="Compile the monitor's fused reductions once for this PyTorch, into the "
                                       "cache folder ($DIAGNOSTICS_CACHE_DIR or ~/.cache/gradient-flow-diagnostics); "
                                       "exit 1 when they cannot be built (the monitor then uses PyTorch reductions).")
    build.set_defaults(func=cmd_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DiagnosticsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
