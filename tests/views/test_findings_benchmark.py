"""benchmarks/findings.py: the scoring of its confusion table, and its harness on two short scenarios (the full
benchmark trains 86 runs and is not run here)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import diagnostics as dx

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "findings.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("findings_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                   # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def outcome(bench, expect="", accept="", found="", problems=""):
    return bench.Outcome("s", 0, frozenset(expect.split()), frozenset(accept.split()), frozenset(found.split()),
                         frozenset(problems.split()))


def test_consequences_are_neither_hits_nor_false_alarms(bench):
    outcomes = [
        outcome(bench, "exploding", "nonfinite", "exploding nonfinite"),     # hit + a consequence
        outcome(bench, "exploding", "", "nonfinite"),                        # a miss + a false alarm
        outcome(bench, "nonfinite", "", "nonfinite"),                        # hit
        outcome(bench),                                                      # healthy, quiet
    ]
    rows = {r["kind"]: r for r in bench.score(outcomes, ("exploding", "nonfinite"))}
    assert (rows["exploding"]["hits"], rows["exploding"]["missed"], rows["exploding"]["false"]) == (1, 1, 0)
    assert (rows["exploding"]["precision"], rows["exploding"]["recall"]) == (1.0, 0.5)
    assert (rows["nonfinite"]["hits"], rows["nonfinite"]["false"], rows["nonfinite"]["consequences"]) == (1, 1, 1)
    assert (rows["nonfinite"]["precision"], rows["nonfinite"]["recall"]) == (0.5, 1.0)
    assert "| exploding | 2 | 1 | 1 | 0 | 0 | 1.00 | 0.50 |" in bench.table(list(rows.values()))


def test_the_harness_trains_labels_and_judges_short_runs(bench, tmp_path):
    scenarios = {s.name: s for s in bench.TRAIN}
    chosen = [replace(scenarios["healthy mlp sgd"], steps=20, seeds=(0,)),
              replace(scenarios["nan input"], steps=20, nan_at=8, seeds=(0,))]
    store = dx.RunStore(tmp_path / "runs")
    runs = bench.ensure_runs(store, chosen, "train", retrain=False)
    assert store.meta(runs[("nan input", 0)])["expect"] == ["nonfinite"]
    assert bench.ensure_runs(store, chosen, "train", retrain=False) == runs           # reused, not trained again
    healthy, nan = bench.evaluate(store, chosen, runs)
    assert healthy.found == frozenset() and nan.found == frozenset({"nonfinite"})
    early = bench.evaluate(store, chosen, runs, early=8)
    assert [o.found for o in early] == [frozenset(), frozenset()]                       # the NaN comes at step 8
