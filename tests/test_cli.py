"""The command-line interface: help, runs, export to CSV, Parquet and TensorBoard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import diagnostics as dx
from diagnostics.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def recorded(store):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    with dx.GradientMonitor(model, store=store, run_name="cli run", histogram_every=1) as mon:
        for _ in range(3):
            loss = model(torch.randn(2, 1, 6, 6)).pow(2).mean()
            loss.backward()
            mon.step(loss=loss, accuracy=0.5)
            model.zero_grad()
    return store, mon.run_id


def test_help_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "diagnostics", "--help"], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert "runs" in result.stdout and "export" in result.stdout


def test_runs_lists_the_store(recorded, capsys):
    store, run = recorded
    assert main(["runs", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert run in out and "cli run" in out and "finished" in out


def test_runs_on_an_empty_store_says_how_to_start(tmp_path, capsys):
    assert main(["runs", "--store", str(tmp_path / "none")]) == 0
    assert "No runs" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_tables(recorded, tmp_path, fmt):
    store, run = recorded
    assert main(["export", run, "--format", fmt, "--out", str(tmp_path / "out"), "--store", str(store.root)]) == 0
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    layers = read(tmp_path / "out" / f"layers.{fmt}")
    steps = read(tmp_path / "out" / f"steps.{fmt}")
    assert len(layers) == 3 * 4 and list(steps["step"]) == [0, 1, 2]
    pd.testing.assert_series_equal(layers["weight_grad_norm"], store.frame(run, join_steps=False)["weight_grad_norm"],
                                   check_names=False)


def test_export_tensorboard_event_files_open_in_tensorboard(recorded, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store, run = recorded
    assert main(["export", run, "--format", "tensorboard", "--out", str(tmp_path / "tb"),
                 "--store", str(store.root)]) == 0
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()
    assert "train/loss" in tags["scalars"] and "weight_grad_norm/0" in tags["scalars"]
    assert [e.step for e in acc.Scalars("train/loss")] == [0, 1, 2]
    expected = store.frame(run, layers=["0"])["weight_grad_norm"].tolist()
    assert [e.value for e in acc.Scalars("weight_grad_norm/0")] == pytest.approx(expected, rel=1e-6)
    assert any(t.startswith("log10_abs_weight_grad/") for t in tags["histograms"])


def test_unknown_run_is_a_clear_error(tmp_path, capsys):
    assert main(["export", "nope", "--store", str(tmp_path)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
