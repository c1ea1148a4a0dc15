"""benchmarks/findings.py: the scoring of its confusion table, its manipulation checks (scoring by what happened),
and its harness with the benchmark's own probe on four short scenarios (the full benchmark trains 208 runs and is
not run here)."""

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
              replace(scenarios["nan input"], steps=20, nan_at=8, seeds=(0,)),
              replace(scenarios["dead half mlp"], steps=12, seeds=(0,)),
              replace(scenarios["zero_grad before step"], steps=12, seeds=(0,))]
    store = dx.RunStore(tmp_path / "runs")
    runs = bench.ensure_runs(store, chosen, "train", retrain=False)
    assert store.meta(runs[("nan input", 0)])["expect"] == ["nonfinite"]
    assert bench.ensure_runs(store, chosen, "train", retrain=False) == runs           # reused, not trained again
    outcomes = bench.evaluate(store, chosen, runs)
    healthy, nan = outcomes[:2]
    assert healthy.found == frozenset() and nan.found == frozenset({"nonfinite"})
    early = bench.evaluate(store, chosen[:2], runs, early=8)
    assert [o.found for o in early] == [frozenset(), frozenset()]                   # the NaN comes at step 8
    # the manipulation checks read the benchmark's own probe, written beside each run
    checked = bench.check(store, chosen, runs, outcomes)
    happened = [frozenset(k for k, v in c.truth.items() if v) for c in checked]
    assert happened == [frozenset(), {"nonfinite"}, {"dead_units"}, {"not_updated"}]
    assert not any(c.not_realised or c.unlabelled or c.excluded for c in checked)
    probe = bench.json.loads(bench.probe_path(store, runs[("nan input", 0)]).read_text())
    assert probe["input_nonfinite"] == [8] and probe["grad_nonfinite"][0] == 8 and len(probe["loss"]) == 20
    dead = bench.json.loads(bench.probe_path(store, runs[("dead half mlp", 0)]).read_text())["units"]
    assert dead["4"]["dead"] >= 32 and dead["4"]["units"] == 64                        # the second hidden ReLU


def test_a_fault_that_did_not_happen_is_scored_by_what_did(bench):
    no_truth = dict.fromkeys(bench.KINDS, False)
    # labelled exploding; the probe saw no explosion but dead units: dead_units is now expected, nonfinite false
    c = bench.Checked(outcome(bench, "exploding", "nonfinite dead_units", "dead_units nonfinite"),
                      {**no_truth, "dead_units": True}, None)
    assert c.not_realised == {"exploding"} and c.unlabelled == {"dead_units"} and not c.excluded
    o = c.rescored()
    assert (o.expect, o.accept, o.false_alarms) == ({"dead_units"}, frozenset(), {"nonfinite"})
    # a fault that happened keeps its accepted consequences; a kind that happened unlabelled is expected
    c = bench.Checked(outcome(bench, "exploding", "nonfinite", "exploding nonfinite"),
                      {**no_truth, "exploding": True, "nonfinite": True, "vanishing": True}, None)
    o = c.rescored()
    assert (o.expect, o.accept, o.missed, o.false_alarms) == ({"exploding", "vanishing"}, {"nonfinite"},
                                                               {"vanishing"}, frozenset())
    # a label that did not come true where what happened cannot be verified: excluded (and listed)
    assert bench.Checked(outcome(bench, "nonfinite"), {**no_truth, "vanishing": None}, None).excluded


def test_the_criteria_on_probe_summaries(bench):
    steps = 30
    base = {"loss": [2.3] * steps, "norm": [1.0] * steps, "in_norm": [0.1] * steps, "out_norm": [1.0] * steps,
            "input_nonfinite": [], "grad_nonfinite": [], "units": {"1": {"units": 8, "dead": 1, "steps": 30}},
            "moved": {"0": 0.3, "1": 0.3}, "trained_unchanged": False, "untouched_unchanged": None}
    assert not any(bench.realised(base).values())
    spike = {**base, "norm": [1.0] * 10 + [500.0] + [1.0] * 19}
    assert bench.realised(spike)["exploding"]
    overflow = {**base, "norm": [1.0] * 10 + [float("inf")] + [float("nan")] * 19,
                "loss": [2.3] * 11 + [float("nan")] * 19}
    assert bench.realised(overflow)["exploding"] and bench.realised(overflow)["nonfinite"]
    log0 = {**base, "loss": [2.3] * 10 + [float("inf")] * 20, "norm": [1.0] * 10 + [float("inf")] * 20}
    assert not bench.realised(log0)["exploding"]                        # an Inf loss is not a gradient overflow
    vanish = {**base, "in_norm": [1e-6] * steps}
    assert bench.realised(vanish)["vanishing"] and not bench.realised(vanish)["exploding"]
    dead = {**base, "in_norm": [0.0] * steps, "units": {"1": {"units": 8, "dead": 8, "steps": 30}}}
    assert not bench.realised(dead)["vanishing"] and bench.realised(dead)["dead_units"]
    assert bench.realised({**base, "moved": {"0": 1e-4}})["update_small"]
    assert not bench.realised({**base, "moved": {"0": 1e-4}, "loss": [0.2] * steps})["update_small"]
    assert bench.realised({**base, "moved": {"0": 5.0}})["update_large"]
    assert bench.realised({**base, "moved": {"0": 0.0}, "trained_unchanged": True})["not_updated"]
