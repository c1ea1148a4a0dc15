"""Command-line interface: ``python -m diagnostics runs|export ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd

from .errors import DiagnosticsError
from .export import FORMATS, export_run
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
