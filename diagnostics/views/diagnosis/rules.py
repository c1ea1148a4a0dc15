"""The rules, written once as a table, and the entry point that runs them on a run, a monitor or a loader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ...errors import StoreError
from ...store import RunStore
from .dead import dead_units
from .depth import across_depth
from .divergence import total_norm
import pandas as pd

from ..matrices import StatMatrix, load_stat_matrix
from .evidence import Evidence, from_frames, from_source
from .finding import Finding, by_severity
from .nonfinite import nonfinite
from .thresholds import Thresholds
from .updates import update_sizes

Rule = Callable[[Evidence, Thresholds], list[Finding]]

#: Every rule, in the order its findings are listed within one severity (the origin of a NaN first).
RULES: dict[str, Rule] = {
    "nonfinite": nonfinite,
    "total_norm": total_norm,
    "across_depth": across_depth,
    "dead_units": dead_units,
    "update_sizes": update_sizes,
}


def diagnose(ev: Evidence, thresholds: Thresholds | None = None) -> list[Finding]:
    """Every rule on one run's evidence; most severe first, a cause before its consequences."""
    t = thresholds or Thresholds()
    return by_severity(link_consequences([f for rule in RULES.values() for f in rule(ev, t)]))


def link_consequences(found: list[Finding]) -> list[Finding]:
    """When gradients exploded before NaN/Inf appeared, list the explosion first and say the NaN followed it.

    With exploding gradients, "updates too small, raise the learning rate" would contradict the fix of the
    explosion, so it is left out.
    """
    exploding = [f for f in found if f.kind == "exploding" and f.steps is not None]
    if exploding:
        found = [f for f in found if f.kind != "update_small"]
    nonfinite = [f for f in found if f.kind == "nonfinite" and f.steps is not None and f.severity != "info"]
    if not exploding or not nonfinite:
        return found
    cause, effect = min(exploding, key=lambda f: f.steps[0]), nonfinite[0]
    if cause.steps[0] > effect.steps[0]:
        return found
    linked = replace(effect, message=f"{effect.message} It follows the exploding gradients from step "
                                     f"{cause.steps[0]} (the finding above): fix those first.")
    rest = [f for f in found if f is not cause and f is not effect]
    return [cause, linked, *rest]


def evidence_of(source: Any, store: RunStore | str | None = None, name: str | None = None) -> Evidence:
    """The evidence of a run id (with ``store``) or a :class:`~diagnostics.GradientMonitor` (duck-typed: ``frame``,
    ``step_frame``, ``run_id``, ``run_name``)."""
    if isinstance(source, str):
        if store is None:
            raise StoreError(f"dx.findings({source!r}) needs store=: the run store that holds this run")
        store = store if isinstance(store, RunStore) else RunStore(store)
        meta = store.meta(source)
        return from_source(StoreSource(store), source, name or repr(str(meta.get("name", source))))
    if callable(getattr(source, "frame", None)) and callable(getattr(source, "step_frame", None)):
        run = str(getattr(source, "run_id", "") or "")
        label = name or repr(str(getattr(source, "run_name", run) or run))
        return from_frames(run, label, source.frame(), source.step_frame())
    raise StoreError(f"dx.findings needs a run id (with store=) or a GradientMonitor, got {type(source).__name__}")


class StoreSource:
    """Reads evidence straight from a store: the stat matrices and every column of the step table."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def stat_matrix(self, run: str, stat: str) -> StatMatrix:
        return load_stat_matrix(self.store, run, stat)

    def step_frame(self, run: str) -> pd.DataFrame:
        return self.store.step_frame(run)


def findings(source: Any, *, store: RunStore | str | None = None, thresholds: Thresholds | None = None,
             name: str | None = None, last_step: int | None = None) -> list[Finding]:
    """Plain-language findings about one run, most severe first.

    Args:
        source: A run id (with ``store``) or a :class:`~diagnostics.GradientMonitor` (finished or still running).
        store: The :class:`~diagnostics.RunStore` (or its folder) holding the run.
        thresholds: Where findings start (default :class:`Thresholds`).
        name: How messages name the run (default its name).
        last_step: Judge only the steps up to this one (what a live run showed then).

    Returns:
        :class:`Finding` objects; ``severity`` is ``problem``, ``warning`` or ``info``.
    """
    return diagnose(evidence_of(source, store, name).until(last_step), thresholds)
