"""Precision and recall of dx.findings on labelled runs whose health or fault we caused on purpose.

Trains every scenario of :mod:`findings_scenarios` (small MLPs, CNNs, an RNN and a transformer on the bundled
8×8 digits, 200-300 steps each, two seeds, recorded with ``unit_activity=True``) into a run store, then asks
``dx.findings`` about every run, once on the whole run and once on its first 50 steps (what a live run shows).
The sets: ``train`` (thresholds chosen on it), ``held-out`` (variants; measured once, then three rules changed),
``held-out-2`` (written after those; measured once, then two rules changed) and ``held-out-3`` (written after
those, measured with the committed rules). Printed per set:

- per run: the expected kinds, the kinds found above ``info``, and misses / false alarms;
- a confusion table per kind: hits, misses, false alarms, consequences (a kind listed as a true consequence of the
  fault, e.g. ``nonfinite`` after a divergence: neither a hit nor a false alarm), precision and recall;
- the first-50-steps check: no ``problem`` that the run's labels do not allow (a rule may withhold a verdict).

A finding counts when its severity is ``warning`` or ``problem``; ``info`` never counts (it is a note, such as
"this layer is frozen").

Run: nice .venv/bin/python benchmarks/findings.py [--store DIR] [--retrain] [--split SET|all]
Runs already in the store (same scenario, split and seed) are reused unless --retrain.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import diagnostics as dx  # noqa: E402
from diagnostics.experiments.data import load_digits  # noqa: E402
from findings_scenarios import HELD_OUT, HELD_OUT_2, HELD_OUT_3, TRAIN, Scenario, monitor_options, train  # noqa: E402

#: The finding kinds scored (in table order).
KINDS = ("vanishing", "exploding", "nonfinite", "dead_units", "update_small", "update_large", "not_updated")
#: How many of the first steps the live-run check looks at.
EARLY_STEPS = 50


@dataclass(frozen=True)
class Outcome:
    """What the findings said about one run."""

    scenario: str
    seed: int
    expect: frozenset[str]
    accept: frozenset[str]
    found: frozenset[str]          # kinds at warning or problem
    problems: frozenset[str]       # kinds at problem

    @property
    def missed(self) -> frozenset[str]:
        return self.expect - self.found

    @property
    def false_alarms(self) -> frozenset[str]:
        return self.found - self.expect - self.accept


def counted(findings: Iterable) -> tuple[frozenset[str], frozenset[str]]:
    """The kinds at warning or problem, and those at problem."""
    findings = list(findings)
    return (frozenset(f.kind for f in findings if f.severity in ("warning", "problem")),
            frozenset(f.kind for f in findings if f.severity == "problem"))


def score(outcomes: Sequence[Outcome], kinds: Sequence[str] = KINDS) -> list[dict]:
    """Per kind: hits, misses, false alarms, consequences, precision and recall (NaN where undefined)."""
    rows = []
    for kind in kinds:
        hits = sum(kind in o.expect and kind in o.found for o in outcomes)
        missed = sum(kind in o.expect and kind not in o.found for o in outcomes)
        false = sum(kind in o.false_alarms for o in outcomes)
        consequences = sum(kind in o.found and kind in o.accept and kind not in o.expect for o in outcomes)
        precision = hits / (hits + false) if hits + false else float("nan")
        recall = hits / (hits + missed) if hits + missed else float("nan")
        rows.append({"kind": kind, "runs": hits + missed, "hits": hits, "missed": missed, "false": false,
                     "consequences": consequences, "precision": precision, "recall": recall})
    return rows


def table(rows: Sequence[dict]) -> str:
    """The confusion rows as a Markdown table."""
    lines = ["| finding | runs with it | hits | missed | false alarms | consequences | precision | recall |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, rc = (f"{r[k]:.2f}" if r[k] == r[k] else "-" for k in ("precision", "recall"))
        lines.append(f"| {r['kind']} | {r['runs']} | {r['hits']} | {r['missed']} | {r['false']} | "
                     f"{r['consequences']} | {p} | {rc} |")
    return "\n".join(lines)


def existing_runs(store: dx.RunStore) -> dict[tuple[str, str, int], str]:
    """(scenario, split, seed) -> run id of the finished runs already in the store."""
    found = {}
    for run in store.run_ids():
        meta = store.meta(run)
        if "scenario" in meta and meta.get("status") == "finished":
            found[(meta["scenario"], meta["split"], int(meta["seed"]))] = run
    return found


def ensure_runs(store: dx.RunStore, scenarios: Sequence[Scenario], split: str, retrain: bool) -> dict:
    """Train what is missing; returns {(scenario, seed): run id}."""
    have = {} if retrain else existing_runs(store)
    data = load_digits(seed=0)
    runs = {}
    for s in scenarios:
        for seed in s.seeds:
            key = (s.name, split, seed)
            if key not in have:
                started = time.perf_counter()
                have[key] = train(s, seed, store, split, data)
                print(f"  trained {s.name} (seed {seed}) in {time.perf_counter() - started:.1f} s", flush=True)
            runs[(s.name, seed)] = have[key]
    return runs


def evaluate(store: dx.RunStore, scenarios: Sequence[Scenario], runs: dict, early: int | None = None
             ) -> list[Outcome]:
    """Ask dx.findings about every run (only its first ``early`` steps when given)."""
    outcomes = []
    for s in scenarios:
        for seed in s.seeds:
            found = dx.findings(runs[(s.name, seed)], store=store, last_step=None if early is None else early - 1)
            kinds, problems = counted(found)
            outcomes.append(Outcome(s.name, seed, s.expect, s.accept, kinds, problems))
    return outcomes


def report(title: str, outcomes: Sequence[Outcome], early: Sequence[Outcome]) -> bool:
    """Print the per-run lines, the confusion table and the early check; True when every target is met."""
    print(f"\n## {title}\n")
    for o in outcomes:
        flags = "".join([f"  MISSED {sorted(o.missed)}" if o.missed else "",
                         f"  FALSE {sorted(o.false_alarms)}" if o.false_alarms else ""])
        print(f"  {o.scenario:32s} s{o.seed}  expect {sorted(o.expect) or '-'}  found {sorted(o.found) or '-'}"
              f"{flags}")
    rows = score(outcomes)
    print("\n" + table(rows))
    quiet = [o for o in outcomes if not o.expect and o.found]
    early_false = [o for o in early if o.problems - o.expect - o.accept]
    print(f"\nHealthy or deliberately frozen runs with a finding above info: {len(quiet)}"
          + "".join(f"\n  {o.scenario} s{o.seed}: {sorted(o.found)}" for o in quiet))
    print(f"First {EARLY_STEPS} steps: runs with a false problem: {len(early_false)} of {len(early)}"
          + "".join(f"\n  {o.scenario} s{o.seed}: {sorted(o.problems - o.expect - o.accept)}" for o in early_false))
    targets = all(r["precision"] >= 0.9 and r["recall"] >= 0.9 for r in rows if r["runs"]
                  and r["precision"] == r["precision"])
    return targets and not quiet and not early_false


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default=None, help="run store to train into and reuse (default: a temporary one)")
    parser.add_argument("--retrain", action="store_true", help="train every run again")
    parser.add_argument("--split", choices=("train", "held-out", "held-out-2", "held-out-3", "all"), default="all")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)          # tiny models: one thread is faster than contended ones
    root = args.store or tempfile.mkdtemp(prefix="findings-benchmark-")
    store = dx.RunStore(root)
    print(f"PyTorch {torch.__version__}, monitor options {monitor_options() or '(no unit_activity)'}, store {root}")
    ok = True
    splits = {"train": TRAIN, "held-out": HELD_OUT, "held-out-2": HELD_OUT_2, "held-out-3": HELD_OUT_3}
    for split in (tuple(splits) if args.split == "all" else (args.split,)):
        scenarios = splits[split]
        started = time.perf_counter()
        runs = ensure_runs(store, scenarios, split, args.retrain)
        trained = time.perf_counter() - started
        full = evaluate(store, scenarios, runs)
        early = evaluate(store, scenarios, runs, EARLY_STEPS)
        ok &= report(f"{split} set: {len(scenarios)} scenarios x 2 seeds ({trained:.0f} s to train)", full, early)
    print("\nAll targets met." if ok else "\nSome targets not met (see above).")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
