"""dx.findings on real recorded runs (from a store and from a live monitor), the HTML report's findings, and the
Gradient flow view keeping every run's findings when one run's fail."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import diagnostics as dx
from diagnostics.views import figures as plots
from diagnostics.views import gradient_flow
from diagnostics.views.gradient_flow import CachedLoader, FlowOptions, gradient_flow_view
from diagnostics.views.report import html_report


def record(store, name: str, lr: float = 0.05, steps: int = 30, nan_at: int | None = None,
           live: list | None = None) -> str:
    """A small MLP trained with SGD on a fixed random problem; ``live`` collects dx.findings(monitor) mid-run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    with dx.GradientMonitor(model, store=store, run_name=name, optimizer=opt, on_nonfinite="ignore") as mon:
        for step in range(steps):
            batch = x.clone()
            if step == nan_at:
                batch[0, 0] = float("nan")
            loss = nn.functional.cross_entropy(model(batch), y)
            loss.backward()
            mon.step(loss=loss)
            opt.step()
            opt.zero_grad()
            if live is not None and step == steps // 2:
                live.append(dx.findings(mon))
    return mon.run_id


def above_info(found) -> set[str]:
    return {f.kind for f in found if f.severity != "info"}


def test_a_healthy_run_has_no_finding_and_a_live_one_gets_no_verdict_on_update_sizes_yet(store):
    live: list = []
    run = record(store, "healthy", live=live)
    assert above_info(dx.findings(run, store=store)) == set()
    assert [(f.kind, f.severity) for f in live[0]] == [("no_verdict", "info")]       # 15 of 20 steps


def test_nan_in_a_batch_is_found_with_its_origin_from_the_store_and_from_the_monitor(store):
    run = record(store, "nan batch", nan_at=10)
    found = dx.findings(run, store=store)
    assert [(f.kind, f.detail, f.steps[0]) for f in found if f.severity == "problem"] == [("nonfinite", "input", 10)]
    assert "'nan batch'" in found[0].message and "data pipeline" in found[0].fix
    json.dumps([f.as_dict() for f in found])


def test_a_divergence_is_exploding_first_then_the_nan_it_caused(store):
    run = record(store, "diverging", lr=200.0, steps=25)
    found = dx.findings(run, store=store)
    assert found[0].kind == "exploding" and found[0].severity == "problem"
    assert above_info(found) <= {"exploding", "nonfinite", "dead_units", "update_large"}


def test_a_monitor_without_a_store_is_judged_from_memory():
    live: list = []
    record(None, "in memory", nan_at=20, live=live)
    assert live[0] == [] or all(f.severity == "info" for f in live[0])               # before the NaN


def test_a_run_id_without_a_store_or_a_wrong_source_is_refused_with_advice(store):
    with pytest.raises(dx.StoreError, match="store="):
        dx.findings("some-run")
    with pytest.raises(dx.StoreError, match="GradientMonitor"):
        dx.findings(42, store=store)
    with pytest.raises(dx.StoreError, match="no run"):
        dx.findings("missing-run", store=store)


def test_findings_can_be_judged_as_a_live_run_showed_them(store):
    run = record(store, "nan batch", nan_at=25)
    assert "nonfinite" in above_info(dx.findings(run, store=store))
    assert above_info(dx.findings(run, store=store, last_step=24)) == set()


def test_the_html_report_shows_each_finding_with_its_severity_and_fix(store):
    run = record(store, "nan <batch>", nan_at=10)
    found = dx.findings(run, store=store)
    html = html_report("r", {}, found, [])
    assert '<div class="finding problem"><strong>problem:</strong>' in html
    assert "<strong>Fix:</strong> check the data pipeline" in html and "&lt;batch&gt;" in html


def test_one_runs_failing_findings_do_not_blank_the_others(store, monkeypatch):
    good, bad = record(store, "good"), record(store, "bad", nan_at=10)
    real = gradient_flow.diagnose

    def failing(ev, thresholds):
        if ev.run == bad:
            raise RuntimeError("damaged statistics")
        return real(ev, thresholds)

    monkeypatch.setattr(gradient_flow, "diagnose", failing)
    view = gradient_flow_view(CachedLoader(store), FlowOptions([good, bad]), plots.run_colors([good, bad]), {})
    assert list(view.findings) == [good] and str(view.finding_errors[bad]) == "damaged statistics"
    assert view.runs_in_order() == [good, bad] and "depth" in view.figures
