"""Precision and recall of dx.findings on labelled runs whose health or fault we caused on purpose.

Trains every scenario of :mod:`findings_scenarios` (small MLPs, CNNs, an RNN and a transformer on the bundled
8×8 digits, 200-300 steps each, two seeds, recorded with ``unit_activity=True``) into a run store, then asks
``dx.findings`` about every run, once on the whole run and once on its first 50 steps (what a live run shows).
The sets: ``train`` (thresholds chosen on it), ``held-out`` (variants; measured once, then three rules changed),
``held-out-2`` (written after those; measured once, then two rules changed), ``held-out-3`` (written after
those, measured with the committed rules), ``held-out-4`` (written with the manipulation checks, before any
of its runs was trained; run once, rules unchanged), ``held-out-5`` (written with version 2 of the checks,
committed before any of its runs was trained; run once, rules unchanged) and ``held-out-6`` (written with
version 3 of the checks, committed before any of its runs was trained; run once, rules unchanged). Printed per
set:

- per run: the expected kinds, the kinds found above ``info``, and misses / false alarms;
- a confusion table per kind: hits, misses, false alarms, consequences (a kind listed as a true consequence of the
  fault, e.g. ``nonfinite`` after a divergence: neither a hit nor a false alarm), precision and recall;
- the first-50-steps check: no ``problem`` that the run's labels do not allow (a rule may withhold a verdict);
- the same, **with manipulation checks**: whether each caused fault actually happened, judged by :data:`CRITERIA`
  on the benchmark's own probe (``findings_scenarios.Probe``: the training loop's loss, gradients, weights and
  its own forward hooks — not the monitor, not the rules). A labelled kind that did not happen is "fault not
  realised": no longer expected, and then the consequences accepted for it are no longer accepted; a kind that
  verifiably happened is expected unless it is an accepted consequence of a fault that happened. A kind measured
  in the band around its criterion (:data:`BORDERLINE`) is not scored in that run. A run whose labelled fault did
  not happen and where some kind cannot be verified is excluded, counted and listed. Version 2 of the criteria
  needs the probe's per-step movement: stores written before it cannot tell the update sizes (``--retrain``).

A finding counts when its severity is ``warning`` or ``problem``; ``info`` never counts (it is a note, such as
"this layer is frozen").

Run: nice .venv/bin/python benchmarks/findings.py [--store DIR] [--retrain] [--split SET|all]
Runs already in the store (same scenario, split and seed) are reused unless --retrain.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
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
from findings_scenarios import (HELD_OUT, HELD_OUT_2, HELD_OUT_3, HELD_OUT_4, HELD_OUT_5,  # noqa: E402
                                HELD_OUT_6, TRAIN, Scenario, monitor_options, probe_path, train)

#: The finding kinds scored (in table order).
KINDS = ("vanishing", "exploding", "nonfinite", "dead_units", "update_small", "update_large", "not_updated")
#: The scenario sets by name.
SPLITS = {"train": TRAIN, "held-out": HELD_OUT, "held-out-2": HELD_OUT_2, "held-out-3": HELD_OUT_3,
          "held-out-4": HELD_OUT_4, "held-out-5": HELD_OUT_5, "held-out-6": HELD_OUT_6}
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


# --- manipulation checks: did the caused fault happen? ------------------------------------------------------
# Each reads only the benchmark's own Probe (findings_scenarios.Probe: the training loop's loss, gradients and
# weights, and its own forward hooks), never the monitor's statistics or the finding rules.
CHANCE = math.log(10)
#: A kind whose measurement falls between "clearly happened" and "clearly did not" (a band around the criterion,
#: set from the healthy range): neither expected nor a false alarm for that run; counted and listed.
BORDERLINE = "borderline"
#: What healthy, frozen and left-out runs of sets 1-4 (66 runs) showed, measured before version 2 was written
#: (per-step movement from the monitor's recorded ‖ΔW‖/‖W‖ of those runs, the only per-step record then; the
#: rest from the probe). Version 2's thresholds are set from these, not from the fault runs' findings.
HEALTHY = {
    "step_movement_median": (1.4e-3, 2.3e-2),   # per run: median over steps of the median layer's ‖ΔW‖/‖W‖
    "step_movement_max": 0.043,                 # the largest single step of any of them
    "norm_rise": (1.26, 106.0),                 # largest total gradient norm / median of the first 5 steps
    "most_dead": (0.0, 0.25),                   # the largest share of a ReLU layer's units never active
    "dx_over_dlogits": (0.025, 4.1),            # median ‖∂L/∂x‖ / ‖∂L/∂logits‖
}
#: Version 2 thresholds (each from HEALTHY, with the factor said in CRITERIA).
SMALL_STEP = 1.4e-4          # 10x below the lowest healthy per-run median step
SMALL_STEP_BAND = 4.7e-4     # 3x below it: between the two, borderline
LARGE_STEP = 0.09            # 2x the largest single healthy step
LARGE_STEPS = 5              # on at least this many finite steps; 1-4 such steps: borderline
EXPLODING_RISE = 300.0       # ~3x the highest healthy total-norm rise (106x)
DEAD_SHARE = 0.40            # of a layer's units never active; healthy reach 25 %, the caused fault 50 %
DEAD_SHARE_BAND = 0.20       # from here up to DEAD_SHARE: borderline
KILLED_SHARE = 0.20          # version 3: of a layer's units active early on and never active at the end
CRITERIA_VERSION = 3
#: Version 1 (held-out 4 and the first re-scoring of sets 1-3 were judged by it); kept for the record.
CRITERIA_V1 = {
    "nonfinite": "a NaN/Inf in the input batch, the loss or any parameter gradient, seen by the training loop",
    "exploding": "the total gradient norm rises >= 100x over the median of its first 5 steps, or reaches +Inf at "
                 "a step whose loss is finite before any NaN, or the median dx/dlogits norm ratio is > 100",
    "vanishing": "the median dx/dlogits norm ratio over finite, positive steps (>= 10) is < 1e-3; not where dL/dx "
                 "is exactly 0 on most finite steps",
    "dead_units": "a hooked ReLU layer has >= 25 % of its units never active on the last 50 finite-loss steps",
    "update_small": "the run did not learn (last 20 finite losses >= 0.7 ln 10) and the median trained layer moved "
                    "0 < |W_end - W_0|/|W_0| < 1e-2 over the run",
    "update_large": "the run did not learn and the median trained layer moved |W_end - W_0|/|W_0| > 1 over the run",
    "not_updated": "every weight the optimizer holds is bit-identical to its start although a gradient was non-zero",
}
#: Version 2 (committed before set 5 was written into a run and before sets 1-4 were re-scored with it).
CRITERIA_V2 = {
    "nonfinite": "a NaN/Inf in the input batch, the loss or any parameter gradient, seen by the training loop "
                 "(unchanged)",
    "exploding": "the total gradient norm sqrt(Σ‖p.grad‖²) rises ≥ 300× over the median of its first 5 steps "
                 "(healthy runs reach 1.3-106×: v1's 100× was met by a healthy run), or reaches +Inf at a step "
                 "whose loss is finite before any NaN, or the median ‖∂L/∂x‖/‖∂L/∂logits‖ is > 100 (healthy: "
                 "0.025-4.1)",
    "vanishing": "the median ‖∂L/∂x‖ / ‖∂L/∂logits‖ over the run's finite, positive steps (at least 10) is < 1e-3; "
                 "False where ∂L/∂x is exactly 0 on most finite steps (dead units, not vanishing) (unchanged)",
    "dead_units": "a hooked ReLU layer has ≥ 40 % of its units never active (output > 0) on any sample of the last "
                  "50 finite-loss steps; 20-40 % is borderline (healthy runs reach 25 %, exactly on v1's line; the "
                  "caused fault kills 50 %)",
    "update_small": "per step, the median trained layer's ‖W_after − W_before‖/‖W_before‖ (steps whose loss and "
                    "weights were finite; at least 10), its median over the run < 1.4e-4 — 10× below the lowest "
                    "healthy run (1.4e-3; healthy 1.4e-3-2.3e-2) —, the run did not learn (last 20 finite losses ≥ "
                    "0.7 ln 10), and the gradient signal was intact: the vanishing, exploding and dead-units checks "
                    "are not true (then the small steps come from the gradient or the initialisation, not the "
                    "learning rate: v1 counted chaotic-tanh nets). 1.4e-4-4.7e-4 (3-10× below) is borderline",
    "update_large": "the median trained layer's per-step ‖ΔW‖/‖W‖ exceeds 0.09 — twice the largest single step of "
                    "any healthy run (0.043) — on at least 5 steps whose loss and weights were finite; 1-4 such "
                    "steps is borderline (v1 judged the net movement over the run with a loss that did not fall, "
                    "so a NaN at the end or a slow healthy CNN counted)",
    "not_updated": "every weight the optimizer holds is bit-identical to its initial value at the end although "
                   "some gradient was non-zero (a lost update); frozen and left-out layers are checked unchanged "
                   "(unchanged)",
}
#: Version 3 (committed before held-out set 6 was written into a run): one change to ``update_small``, whose
#: "intact gradient" clause in version 2 also excluded runs with units dead from initialisation (set 5's
#: "tiny lr plain sgd d5 w56": 41-48 % of a layer dead from the start, which lr 1e-5 cannot change). Only units
#: that training killed now count against the learning-rate verdict.
CRITERIA = {
    **CRITERIA_V2,
    "update_small": "per step, the median trained layer's ‖W_after − W_before‖/‖W_before‖ (steps whose loss and "
                    "weights were finite; at least 10), its median over the run < 1.4e-4 — 10× below the lowest "
                    "healthy run (1.4e-3; healthy 1.4e-3-2.3e-2) —, the run did not learn (last 20 finite losses ≥ "
                    "0.7 ln 10), and the gradient signal was intact: the vanishing and exploding checks are not "
                    "true and training did not kill ≥ 20 % of a ReLU layer's units (active on some sample of the "
                    "first 10 finite steps, never on the last 50; units dead from initialisation do not count — "
                    "version 2 counted them). 1.4e-4-4.7e-4 (3-10× below) is borderline",
}


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def _rise(norm: Sequence[float]) -> float:
    """The largest finite total gradient norm over the median of the first 5 steps' finite ones."""
    first = _median([n for n in norm[:5] if math.isfinite(n)])
    top = max((n for n in norm if math.isfinite(n)), default=math.nan)
    return top / first if first > 0 else math.nan


def _band(value: float, yes: bool, no: bool) -> bool | str | None:
    """True / False / BORDERLINE from a measured value (None when it is NaN)."""
    if value != value:
        return None
    return True if yes else (False if no else BORDERLINE)


def realised(m: dict) -> dict[str, bool | str | None]:
    """Per kind: did it happen in this run — True, False, :data:`BORDERLINE` or None (the probe cannot tell) —
    by :data:`CRITERIA` (version 3) on a probe summary. A summary without per-step movement (written before
    version 2) cannot tell the update sizes."""
    loss, norm = m["loss"], m["norm"]
    nan_at = min([i for i, (l, n) in enumerate(zip(loss, norm)) if math.isnan(l) or math.isnan(n)], default=len(loss))
    rise = _rise(norm)
    overflow = any(math.isinf(norm[i]) and math.isfinite(loss[i]) for i in range(nan_at))
    pairs = [(a, b) for a, b in zip(m["in_norm"], m["out_norm"]) if math.isfinite(a) and math.isfinite(b) and b > 0]
    ratios = [a / b for a, b in pairs if a > 0]
    depth = _median(ratios)
    last = [v for v in loss[-20:] if math.isfinite(v)]
    learned = len(last) >= 10 and sum(last) / len(last) < 0.7 * CHANCE
    units = [u for u in m["units"].values() if u["steps"] >= 10]
    grad_seen = any(math.isfinite(n) and n > 0 for n in norm)
    vanishing = None if len(ratios) < 10 else (len(ratios) > len(pairs) / 2 and depth < 1e-3)
    exploding = bool(rise >= EXPLODING_RISE or overflow or depth > 100)
    # Version 3: units that training killed (a summary written before version 3 has no "killed": every dead
    # unit counts, as in version 2).
    killed = any(u.get("killed", u["dead"]) / u["units"] >= (KILLED_SHARE if "killed" in u else DEAD_SHARE)
                 for u in units)
    if units:
        share = max(u["dead"] / u["units"] for u in units)
        dead = True if share >= DEAD_SHARE else (BORDERLINE if share >= DEAD_SHARE_BAND else False)
    else:
        dead = False if not m["units"] else None
    steps = [v for v in m.get("step_moved", []) if math.isfinite(v)]
    small: bool | str | None = None
    large: bool | str | None = None
    if "step_moved" in m:
        if len(steps) >= 10:
            typical = _median(steps)
            intact = vanishing is not True and not exploding and not killed
            small = (False if learned or not intact or typical == 0        # no movement at all: not_updated
                     else _band(typical, typical < SMALL_STEP, typical >= SMALL_STEP_BAND))
        elif not learned:
            small = None
        else:
            small = False
        big = sum(v > LARGE_STEP for v in steps)
        large = None if not steps else (True if big >= LARGE_STEPS else (BORDERLINE if big else False))
    return {
        "nonfinite": bool(m["input_nonfinite"] or m["grad_nonfinite"] or any(not math.isfinite(v) for v in loss)),
        "exploding": exploding,
        "vanishing": vanishing,
        "dead_units": dead,
        "update_small": small,
        "update_large": large,
        "not_updated": bool(m["trained_unchanged"] and grad_seen),
    }


def measures(m: dict) -> str:
    """The probe's numbers behind :func:`realised`, in one line."""
    norm = m["norm"]
    rise = _rise(norm)
    ratios = [a / b for a, b in zip(m["in_norm"], m["out_norm"]) if math.isfinite(a) and math.isfinite(b) and b > 0
              and a > 0]
    last = [v for v in m["loss"][-20:] if math.isfinite(v)]
    dead = max((u["dead"] / u["units"] for u in m["units"].values() if u["steps"] >= 10), default=math.nan)
    killed = max((u.get("killed", math.nan) / u["units"] for u in m["units"].values() if u["steps"] >= 10),
                 default=math.nan)
    steps = [v for v in m.get("step_moved", []) if math.isfinite(v)]
    return (f"norm rise {rise:.3g}, dx/dlogits {_median(ratios):.3g}, last loss "
            f"{(sum(last) / len(last)) if last else math.nan:.3g}, most dead {dead:.0%} (killed {killed:.0%}), "
            f"step {_median(steps):.3g} (max {max(steps, default=math.nan):.3g}, "
            f"{sum(v > LARGE_STEP for v in steps)} > {LARGE_STEP}, {len(steps)} finite), "
            f"moved {_median(list(m['moved'].values())):.3g}")


@dataclass(frozen=True)
class Checked:
    """One run's labels set against what its probe says happened."""

    outcome: Outcome
    truth: dict                      # kind -> True / False / None
    untouched_ok: bool | None        # frozen / left-out layers unchanged (None: none were)

    @property
    def not_realised(self) -> frozenset[str]:
        return frozenset(k for k in self.outcome.expect if self.truth.get(k) is False)

    @property
    def borderline(self) -> frozenset[str]:
        """Kinds measured in the band around their criterion: not scored in this run (neither hit, miss nor false
        alarm)."""
        return frozenset(k for k in KINDS if self.truth.get(k) == BORDERLINE)

    @property
    def unlabelled(self) -> frozenset[str]:
        """Kinds that happened but are neither expected nor an accepted consequence (of a fault that happened)."""
        accept = self.outcome.accept if not self.not_realised else frozenset()
        return frozenset(k for k in KINDS if self.truth.get(k) is True) - self.outcome.expect - accept

    @property
    def excluded(self) -> bool:
        """A labelled fault that did not happen in a run where some kind cannot be verified: not scored."""
        return bool(self.not_realised) and any(self.truth.get(k) is None for k in KINDS)

    def rescored(self) -> Outcome:
        """The outcome scored by what happened: a fault that did not happen is no longer expected, and then its
        consequences are no longer accepted; a kind that verifiably happened is expected unless it is an accepted
        consequence of a fault that happened; a borderline kind is not scored (accepted, not expected)."""
        o = self.outcome
        accept = (o.accept if not self.not_realised else frozenset()) | self.borderline
        expect = (o.expect - self.not_realised - self.borderline) | self.unlabelled
        return Outcome(o.scenario, o.seed, frozenset(expect), frozenset(accept), o.found, o.problems)


def check(store: dx.RunStore, scenarios: Sequence[Scenario], runs: dict, outcomes: Sequence[Outcome]
          ) -> list[Checked]:
    """The manipulation checks of every run (outcomes in the order of :func:`evaluate`)."""
    checked, it = [], iter(outcomes)
    for s in scenarios:
        for seed in s.seeds:
            m = json.loads(probe_path(store, runs[(s.name, seed)]).read_text())
            checked.append(Checked(next(it), realised(m), m.get("untouched_unchanged")))
    return checked


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
    """(scenario, split, seed) -> run id of the finished runs already in the store with their probe summary."""
    found = {}
    for run in store.run_ids():
        meta = store.meta(run)
        if "scenario" in meta and meta.get("status") == "finished" and probe_path(store, run).exists():
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


def report_checked(title: str, checked: Sequence[Checked], early: Sequence[Outcome], probes: Sequence[dict]
                   ) -> bool:
    """The manipulation checks: runs whose labels did not hold, then the tables scored by what happened."""
    print(f"\n### {title}, with manipulation checks\n")
    bad = [c for c in checked if c.untouched_ok is False]
    for c, m in zip(checked, probes):
        o = c.outcome
        if c.not_realised or c.unlabelled or c.borderline or c.untouched_ok is False:
            what = "EXCLUDED, " if c.excluded else ""
            print(f"  {o.scenario:32s} s{o.seed}  {what}"
                  + (f"fault not realised {sorted(c.not_realised)}; " if c.not_realised else "")
                  + (f"also happened {sorted(c.unlabelled)}; " if c.unlabelled else "")
                  + (f"borderline (not scored) {sorted(c.borderline)}; " if c.borderline else "")
                  + ("FROZEN/LEFT-OUT LAYER MOVED; " if c.untouched_ok is False else "")
                  + f"happened {sorted(k for k, v in c.truth.items() if v is True) or '-'}"
                  + (f", unknown {sorted(k for k, v in c.truth.items() if v is None)}"
                     if any(v is None for v in c.truth.values()) else "")
                  + f"  [{measures(m)}]  found {sorted(o.found) or '-'}")
    kept = [c for c in checked if not c.excluded]
    rescored = [c.rescored() for c in kept]
    not_realised = [c for c in checked if c.not_realised]
    border = [c for c in kept if c.borderline]
    print(f"\nLabels that did not come true: {len(not_realised)} of {len(checked)} runs; excluded (what happened "
          f"not verifiable): {len(checked) - len(kept)}; runs with a borderline kind (not scored for it): "
          f"{len(border)}; frozen or left-out layers that moved: {len(bad)}")
    rows = score(rescored)
    print("\n" + table(rows))
    quiet = [o for o in rescored if not o.expect and o.found - o.accept]
    early_checked = [Checked(e, c.truth, c.untouched_ok).rescored() for e, c in zip(early, checked)
                     if not c.excluded]
    early_false = [o for o in early_checked if o.problems - o.expect - o.accept]
    print(f"\nRuns with nothing verified to have happened but a finding above info (borderline kinds aside): "
          f"{len(quiet)}"
          + "".join(f"\n  {o.scenario} s{o.seed}: {sorted(o.found - o.accept)}" for o in quiet))
    print(f"First {EARLY_STEPS} steps: runs with a false problem (checked labels): {len(early_false)} of "
          f"{len(early_checked)}"
          + "".join(f"\n  {o.scenario} s{o.seed}: {sorted(o.problems - o.expect - o.accept)}" for o in early_false))
    targets = all(r["precision"] >= 0.9 and r["recall"] >= 0.9 for r in rows if r["runs"]
                  and r["precision"] == r["precision"])
    return targets and not quiet and not early_false and not bad


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default=None, help="run store to train into and reuse (default: a temporary one)")
    parser.add_argument("--retrain", action="store_true", help="train every run again")
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)          # tiny models: one thread is faster than contended ones
    root = args.store or tempfile.mkdtemp(prefix="findings-benchmark-")
    store = dx.RunStore(root)
    print(f"PyTorch {torch.__version__}, monitor options {monitor_options() or '(no unit_activity)'}, store {root}")
    print(f"Manipulation checks, version {CRITERIA_VERSION} (the benchmark's own probe, not the monitor):"
          + "".join(f"\n  {k}: {v}" for k, v in CRITERIA.items()))
    ok = True
    for split in (tuple(SPLITS) if args.split == "all" else (args.split,)):
        scenarios = SPLITS[split]
        started = time.perf_counter()
        runs = ensure_runs(store, scenarios, split, args.retrain)
        trained = time.perf_counter() - started
        full = evaluate(store, scenarios, runs)
        early = evaluate(store, scenarios, runs, EARLY_STEPS)
        title = f"{split} set: {len(scenarios)} scenarios x 2 seeds ({trained:.0f} s to train)"
        ok &= report(title, full, early)
        probes = [json.loads(probe_path(store, runs[(s.name, seed)]).read_text())
                  for s in scenarios for seed in s.seeds]
        ok &= report_checked(title, check(store, scenarios, runs, full), early, probes)
    print("\nAll targets met." if ok else "\nSome targets not met (see above).")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
