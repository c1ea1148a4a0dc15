"""Export a stored run as CSV, Parquet or TensorBoard event files."""

from __future__ import annotations

import io
import math
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import StoreError
from ..store import RunStore
from .text import csv_safe

FORMATS = ("csv", "parquet", "tensorboard")

#: Per-layer statistics written as TensorBoard scalars (tag ``<statistic>/<layer>``).
TENSORBOARD_LAYER_SCALARS = ("weight_grad_norm", "act_grad_norm", "update_ratio", "act_zero_frac", "weight_norm")


def tensorboard_zip(store: RunStore, run_id: str) -> bytes:
    """One run's TensorBoard export as the bytes of a zip file (for a download button)."""
    with tempfile.TemporaryDirectory() as tmp:
        export_run(store, run_id, "tensorboard", Path(tmp) / run_id)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in (Path(tmp) / run_id).rglob("*"):
                zf.write(path, path.relative_to(tmp))
        return buf.getvalue()


def table_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """A table as the bytes of a ``csv`` or ``parquet`` file (for a download button)."""
    if fmt == "csv":
        return csv_safe(frame).to_csv(index=False).encode()   # text cells never become spreadsheet formulas
    if fmt == "parquet":
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return buf.getvalue()
    raise StoreError(f"unknown table format {fmt!r}; use 'csv' or 'parquet'")


def export_run(store: RunStore, run_id: str, fmt: str, out: str | Path | None = None) -> list[Path]:
    """Write one run's tables to ``out`` (default ``exports/<run_id>``) and return the files written.

    Args:
        store: The store holding the run.
        run_id: The run's id.
        fmt: ``"csv"`` or ``"parquet"`` (``layers``, ``steps`` and ``params`` tables, plus ``histograms`` in
            Parquet) or ``"tensorboard"`` (an event file: per-layer scalars, loss and metrics, and the
            recorded log10|g| histograms, viewable with ``tensorboard --logdir <out>``).
        out: Output directory.
    """
    if fmt not in FORMATS:
        raise StoreError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    meta = store.meta(run_id)
    out_dir = Path(out) if out is not None else Path("exports") / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "tensorboard":
        return [_export_tensorboard(store, run_id, meta, out_dir)]
    written = []
    tables = {"layers": store.frame(run_id, join_steps=False), "steps": store.step_frame(run_id),
              "params": store.param_frame(run_id)}
    if fmt == "parquet":
        tables["histograms"] = store.histogram_frame(run_id)
    for name, frame in tables.items():
        path = out_dir / f"{name}.{fmt}"
        if fmt == "csv":
            csv_safe(frame).to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        written.append(path)
    return written


def _export_tensorboard(store: RunStore, run_id: str, meta: dict, out_dir: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    steps = store.step_frame(run_id)
    layers = store.frame(run_id, join_steps=False, columns=["step", "layer", *TENSORBOARD_LAYER_SCALARS])
    hist = store.histogram_frame(run_id)
    edges = np.asarray(meta.get("hist_edges", []), dtype=float)
    writer = SummaryWriter(log_dir=str(out_dir), comment=run_id)
    try:
        skip = {"run", "step", "time", "nonfinite_forward_layer", "nonfinite_backward_layer"}
        for _, row in steps.iterrows():
            for column, value in row.items():
                if column not in skip and isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(f"train/{column}", float(value), int(row["step"]))
        for _, row in layers.iterrows():
            for column in TENSORBOARD_LAYER_SCALARS:
                value = row.get(column)
                if value is not None and isinstance(value, float) and math.isfinite(value):
                    writer.add_scalar(f"{column}/{row['layer']}", value, int(row["step"]))
        for _, row in hist.iterrows():
            counts = np.asarray(row["counts"], dtype=float)
            if len(edges) != len(counts) + 1 or counts.sum() == 0:
                continue
            centers = (edges[:-1] + edges[1:]) / 2
            writer.add_histogram_raw(
                f"log10_abs_{row['kind']}/{row['layer']}", min=float(edges[0]), max=float(edges[-1]),
                num=int(counts.sum()), sum=float((centers * counts).sum()),
                sum_squares=float((centers ** 2 * counts).sum()), bucket_limits=edges[1:].tolist(),
                bucket_counts=counts.tolist(), global_step=int(row["step"]))
        writer.add_text("run", f"{meta.get('name', run_id)} ({run_id}), model {meta.get('model', '?')}")
    finally:
        writer.close()
    files = sorted(out_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise StoreError(f"TensorBoard wrote no event file in {out_dir}")
    return files[-1]

