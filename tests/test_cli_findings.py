"""python -m diagnostics findings: the findings with their fixes, and an exit code for CI."""

from __future__ import annotations

import json

import torch
from torch import nn

import diagnostics as dx
from diagnostics.cli import main


def record(store, nan_at: int | None = None) -> str:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    with dx.GradientMonitor(model, store=store, run_name="cli", optimizer=opt, on_nonfinite="ignore") as mon:
        for step in range(25):
            batch = x.clone()
            if step == nan_at:
                batch[0, 0] = float("nan")
            loss = nn.functional.cross_entropy(model(batch), y)
            loss.backward()
            mon.step(loss=loss)
            opt.step()
            opt.zero_grad()
    return mon.run_id


def test_a_healthy_run_exits_0(store, capsys):
    run = record(store)
    assert main(["findings", run, "--store", str(store.root), "--fail-on", "warning"]) == 0
    assert "no findings" in capsys.readouterr().out


def test_a_problem_exits_1_and_prints_the_origin_and_the_fix(store, capsys):
    run = record(store, nan_at=5)
    assert main(["findings", run, "--store", str(store.root)]) == 1
    captured = capsys.readouterr()
    assert "[problem] nonfinite (input)" in captured.out and "Fix: check the data pipeline" in captured.out
    assert "1 finding(s) at or above problem" in captured.err


def test_json_output_and_errors(store, capsys):
    run = record(store, nan_at=5)
    assert main(["findings", run, "--store", str(store.root), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found[0]["kind"] == "nonfinite" and found[0]["steps"] == [5, 24] and found[0]["fix"]
    assert main(["findings", "no-such-run", "--store", str(store.root)]) == 2
    assert "no run" in capsys.readouterr().err
