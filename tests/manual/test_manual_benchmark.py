"""benchmarks/manual_grads.py runs and prints one ratio per case and a verdict per target."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "manual_grads.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("manual_grads_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measure_alternates_and_reports_median_ratio(benchmark) -> None:
    times = iter([1.0, 2.0] * 2 + [1.0, 3.0, 4.0, 1.0, 1.0, 2.0])  # warm-up pairs, then (a, m), (m, a), (a, m)
    result = benchmark.measure(lambda: next(times), lambda: next(times), repeats=3)
    # pairs: a=1 m=3 (3.0); m=4 a=1 (4.0); a=1 m=2 (2.0)
    assert result["ratio"] == 3.0
    assert result["autograd_ms"] == 1000.0


def test_small_cases_run(benchmark) -> None:
    for result in (
        benchmark.conv2d_case(2, 4, 4, 6, False, 1),
        benchmark.conv2d_case(1, 2, 2, 4, True, 1),
        benchmark.max_pool2d_case(2, 4, 6, False, 1),
        benchmark.max_pool2d_case(2, 4, 6, True, 1),
        benchmark.avg_pool2d_case(2, 4, 6, 1),
    ):
        assert result["ratio"] > 0


def test_main_prints_a_verdict_for_the_conv_target(benchmark, capsys, monkeypatch) -> None:
    monkeypatch.setattr(benchmark, "conv2d_case", lambda *args: {"autograd_ms": 1.0, "manual_ms": 1.1, "ratio": 1.1})
    monkeypatch.setattr(benchmark, "max_pool2d_case", lambda *args: {"autograd_ms": 1.0, "manual_ms": 2, "ratio": 2.0})
    monkeypatch.setattr(benchmark, "avg_pool2d_case", lambda *args: {"autograd_ms": 1.0, "manual_ms": 1, "ratio": 1.0})
    assert benchmark.main(["--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "conv2d-fast (N=32 64->64 32x32 k=3 p=1): target ratio <= 1.2: MET (1.10)" in out
    assert out.count("no target, reported for information") == 4
