"""The Compare training page under AppTest: a tiny comparison runs to completion, past ones reopen, errors show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import diagnostics as dx

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app.py"
PAGE = "pages/compare.py"


def open_compare(store_dir: Path) -> AppTest:
    """The page through the router once ``app.py`` registers it, else the page script on its own."""
    routed = PAGE in APP.read_text()
    at = AppTest.from_file(str(APP if routed else ROOT / PAGE), default_timeout=120)
    at.session_state["store_root"] = str(store_dir)
    at.run()
    if routed:
        at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def chart_titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    store = dx.RunStore(tmp_path_factory.mktemp("cmp") / "runs")
    runs = dx.compare(variants=["plain", "residual"], depth=3, steps=6, dataset="synthetic", seed=0, store=store,
                      width=4, batch_size=16, eval_every=2)
    return store, runs


def test_empty_store_invites_a_first_comparison(tmp_path):
    at = open_compare(tmp_path / "runs")
    assert any("No comparisons" in info.value for info in at.info)
    assert at.button(key="FormSubmitter:compare_settings-Start comparison") is not None


def test_a_tiny_comparison_runs_to_completion_and_shows_the_plots(tmp_path):
    at = open_compare(tmp_path / "runs")
    at.multiselect(key="cmp_variants").set_value(["plain", "residual+batchnorm"])
    at.slider(key="cmp_depth").set_value(3)
    at.number_input(key="cmp_width").set_value(4)
    at.number_input(key="cmp_steps").set_value(8)
    at.selectbox(key="cmp_dataset").set_value("digits")
    at.button(key="FormSubmitter:compare_settings-Start comparison").click().run()
    assert not at.exception and not at.error
    job = at.session_state["compare_job"]
    assert job.wait(timeout=90), "the comparison did not finish in 90 s"
    assert job.error is None and set(job.result) == {"plain", "residual+batchnorm"}
    at.run()
    assert not at.exception and not at.error
    assert at.selectbox(key="compare_group").value == job.group
    assert chart_titles(at) == ["Training loss", "Held-out accuracy", "weight-gradient L2 norm ‖∂L/∂W‖ vs depth",
                                "First / last conv layer gradient ratio", "Backward gain per block",
                                "Cumulative gain from the last block back"]
    reading = " ".join(m.value for m in at.markdown)
    assert "plain" in reading and "held-out accuracy" in reading


def test_a_past_comparison_reopens_from_the_store(recorded):
    store, runs = recorded
    at = open_compare(store.root)
    group = store.meta(runs["plain"])["group"]
    assert at.selectbox(key="compare_group").value == group
    assert len(chart_titles(at)) == 6                      # with the block gains
    table = at.dataframe[0].value
    assert list(table["variant"]) == ["plain", "residual"] and list(table["run"]) == [runs["plain"], runs["residual"]]
    at.radio(key="cmp_stat").set_value("act_grad_norm").run()
    assert not at.exception and len(chart_titles(at)) == 6


def test_a_missing_dataset_folder_is_an_error_message_not_a_traceback(tmp_path):
    at = open_compare(tmp_path / "runs")
    at.selectbox(key="cmp_dataset").set_value("folder")
    at.text_input(key="cmp_root").set_value(str(tmp_path / "nowhere"))
    at.button(key="FormSubmitter:compare_settings-Start comparison").click().run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)
    assert "compare_job" not in at.session_state


def test_while_training_each_variant_has_a_progress_bar_and_start_is_disabled(tmp_path):
    at = open_compare(tmp_path / "runs")
    job = dx.ComparisonJob(store=str(tmp_path / "runs"), variants=["plain", "batchnorm"], depth=3, steps=4,
                           dataset="synthetic", width=4, batch_size=16)        # created, not started yet
    at.session_state["compare_job"] = job
    at.run()
    assert not at.exception
    bars = at.get("progress")
    assert [b.proto.text for b in bars] == ["plain: waiting", "batchnorm: waiting"]
    assert at.button(key="FormSubmitter:compare_settings-Start comparison").disabled
    job.start()
    assert job.wait(timeout=60) and job.error is None
    at.run()
    assert not at.exception and not at.get("progress")
    assert not at.button(key="FormSubmitter:compare_settings-Start comparison").disabled
    assert at.selectbox(key="compare_group").value == job.group
