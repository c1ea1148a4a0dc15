"""The Gradient flow page's findings: each with its fix, and a run whose findings fail shown in its own box while
the other run keeps its findings."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from diagnostics.views import gradient_flow
from tests.recorded import make_store

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_one_runs_failing_findings_are_shown_beside_the_other_runs_findings(tmp_path, monkeypatch):
    store, runs = make_store(tmp_path / "runs")
    real = gradient_flow.diagnose

    def failing(ev, thresholds):
        if ev.run == runs["bn"]:
            raise RuntimeError("damaged statistics")
        return real(ev, thresholds)

    monkeypatch.setattr(gradient_flow, "diagnose", failing)
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["store_root"] = str(store.root)
    at.session_state["selected_runs"] = [runs["plain"], runs["bn"]]
    at.run()
    at.switch_page("pages/gradient_flow.py").run()
    assert len(at.exception) == 1 and "damaged statistics" in at.exception[0].message
    errors = [e.value for e in at.error]
    assert any("bn cnn" in e and "could not be computed" in e for e in errors)
    notes = [i.value for i in at.info]
    assert any("plain cnn" in n and "no verdict on update sizes" in n and "Fix" in n for n in notes)
    assert len(at.get("plotly_chart")) >= 5                                      # the charts are all there
