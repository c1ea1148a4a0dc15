"""Comparisons read back from the store: which exist, their runs, and their curves and conv-layer rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from ..errors import StoreError
from .models import VARIANTS
from ..store import RunStore

#: Layer types that count as conv layers for the first/last ratio.
CONV_TYPES: tuple[str, ...] = ("Conv1d", "Conv2d")


def comparisons(store: RunStore) -> pd.DataFrame:
    """One row per comparison in the store (newest first): group, created, variants, runs, depth, dataset.

    A comparison is the set of runs whose metadata share a ``group`` id (written by :func:`diagnostics.compare`).
    """
    rows = []
    for run in store.run_ids():
        meta = store.meta(run)
        if meta.get("kind") != "comparison" or not meta.get("group"):
            continue
        rows.append({"group": meta["group"], "run": run, "variant": meta.get("series") or meta.get("variant", ""),
                     "created": meta.get("created", 0.0), "status": meta.get("status", ""),
                     "depth": (meta.get("config") or {}).get("depth"),
                     "dataset": (meta.get("dataset") or {}).get("name", ""),
                     "steps": (meta.get("train") or {}).get("steps")})
    columns = ["group", "created", "variants", "runs", "depth", "dataset", "steps", "status"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    grouped = frame.groupby("group", sort=False).agg(
        created=("created", "min"), variants=("variant", lambda v: ", ".join(dict.fromkeys(v))),
        runs=("run", "count"), depth=("depth", _depths), dataset=("dataset", "first"), steps=("steps", "first"),
        status=("status", lambda s: "finished" if (s == "finished").all() else ", ".join(sorted(set(s)))),
    ).reset_index()
    grouped["created"] = pd.to_datetime(grouped["created"], unit="s", utc=True)
    return grouped.sort_values("created", ascending=False, kind="stable").reset_index(drop=True)[columns]


def _depths(depths: pd.Series) -> str:
    """The depths of a comparison's runs: ``"20"``, or ``"5, 10, 20"`` for a depth sweep."""
    return ", ".join(str(d) for d in sorted(set(depths.dropna().astype(int))))


def comparison_runs(store: RunStore, group: str) -> dict[str, str]:
    """``{variant: run_id}`` of one comparison, in the standard variant order."""
    found = {}
    for run in store.run_ids():
        meta = store.meta(run)
        if meta.get("group") == group and meta.get("kind") == "comparison":
            found[meta.get("variant", run)] = run
    if not found:
        raise StoreError(f"no comparison {group!r} in {store.root}; comparisons() lists them")
    order = [v for v in VARIANTS if v in found] + sorted(v for v in found if v not in VARIANTS)
    return {v: found[v] for v in order}


@dataclass
class ComparisonData:
    """Everything the comparison plots and summary need, one ``variant`` column per frame.

    Attributes:
        runs: ``{variant: run_id}``.
        steps: One row per (variant, step): loss, accuracy (held-out, NaN between evaluations),
            train_accuracy, grad_norm_total, nonfinite layers.
        layers: One row per (variant, step, conv layer): ``conv_index`` (1 = first conv in execution order),
            weight_grad_norm, act_grad_norm, update_ratio.
        meta: ``{variant: run metadata}``.
        blocks: One row per (variant, step, block): the backward gain table (``RunStore.block_frame``); empty
            for runs recorded without ``blocks=`` (older comparisons).
    """

    runs: dict[str, str]
    steps: pd.DataFrame
    layers: pd.DataFrame
    meta: dict[str, dict]
    blocks: pd.DataFrame = field(default_factory=pd.DataFrame)


def load_comparison(store: RunStore, runs: Mapping[str, str]) -> ComparisonData:
    """Read the runs of a comparison (``{variant: run_id}``, e.g. from :func:`comparison_runs`)."""
    steps, layers, blocks, metas = [], [], [], {}
    for variant, run in runs.items():
        metas[variant] = store.meta(run)
        s = store.step_frame(run)
        s.insert(0, "variant", variant)
        steps.append(s)
        f = store.frame(run, columns=["type", "depth", "weight_grad_norm", "act_grad_norm", "update_ratio"],
                        join_steps=False)
        f = f[f["type"].isin(CONV_TYPES)].copy()
        rank = {d: i + 1 for i, d in enumerate(sorted(f["depth"].unique()))}
        f["conv_index"] = f["depth"].map(rank).astype(int)
        f.insert(0, "variant", variant)
        layers.append(f)
        b = store.block_frame(run)
        if not b.empty:
            b.insert(0, "variant", variant)
            blocks.append(b)
    return ComparisonData(dict(runs), pd.concat(steps, ignore_index=True) if steps else pd.DataFrame(),
                          pd.concat(layers, ignore_index=True) if layers else pd.DataFrame(), metas,
                          pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame())
