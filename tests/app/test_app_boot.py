"""The dashboard boots under AppTest with an empty and with a non-empty store."""

from __future__ import annotations

from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest
from torch import nn

import diagnostics as dx

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def boot(store_dir: Path) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["store_root"] = str(store_dir)
    return at.run()


def test_empty_store_explains_how_to_record_a_first_run(tmp_path):
    at = boot(tmp_path / "runs")
    assert not at.exception
    assert any("No runs" in info.value for info in at.info)
    assert any("GradientMonitor" in code.value for code in at.code)


def test_non_empty_store_lists_its_runs(tmp_path):
    store = dx.RunStore(tmp_path / "runs")
    model = nn.Linear(3, 1)
    with dx.GradientMonitor(model, store=store, run_name="listed run") as mon:
        model(torch.randn(2, 3)).sum().backward()
        mon.step()
    at = boot(tmp_path / "runs")
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["run"]) == [mon.run_id] and list(table["name"]) == ["listed run"]
