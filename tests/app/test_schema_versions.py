"""Runs recorded before the layer table gained parameter-owner rows (schema 1) still open on every page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from streamlit.testing.v1 import AppTest

from tests.recorded import make_store

APP = str(Path(__file__).resolve().parents[2] / "app.py")
SCHEMA_2 = {"layers": ("kind", "shared_with", "in_optimizer"), "params": ("in_optimizer",)}


def as_schema_1(run_dir: Path) -> None:
    """Rewrite a run as the previous monitor wrote it: no owner-row columns, no blocks table, schema 1."""
    for table, columns in SCHEMA_2.items():
        for path in (run_dir / table).glob("*.parquet"):
            data = pq.read_table(path)
            pq.write_table(data.drop_columns([c for c in columns if c in data.column_names]), path)
    shutil.rmtree(run_dir / "blocks", ignore_errors=True)
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["schema_version"] = 1
    meta_path.write_text(json.dumps(meta))


def test_schema_1_runs_open_on_every_page(tmp_path):
    store, runs = make_store(tmp_path / "runs")
    for run in runs.values():
        as_schema_1(store.root / run)
    assert "kind" not in store.frame(runs["plain"]).columns
    for page in (None, "pages/gradient_flow.py", "pages/kernels.py", "pages/compare.py", "pages/checks.py"):
        at = AppTest.from_file(APP, default_timeout=120)
        at.session_state["store_root"] = str(store.root)
        at.session_state["selected_runs"] = [runs["plain"], runs["bn"]]
        at.run()
        if page is not None:
            at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
        if page == "pages/gradient_flow.py":
            assert len(at.get("plotly_chart")) >= 6
