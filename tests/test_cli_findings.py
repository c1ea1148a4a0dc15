"""python -m diagnostics findings: the findings with their fixes, and an exit code for CI."""

from __future__ import annotations

import json

from diagnostics.cli import main
from tests.views.test_findings_api import record as train


def record(store, nan_at: int | None = None) -> str:
    return train(store, "cli", steps=25, nan_at=nan_at)


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
