"""Block gains, depth sweeps and presets on the Gradient flow and Compare pages (AppTest, real tiny runs)."""

from __future__ import annotations

import json

import pytest

import diagnostics as dx
from diagnostics.experiments.presets import PRESETS, Preset

from tests.app.test_compare_page import chart_titles, open_compare
from tests.app.test_pages import open_page
from tests.recorded import record_cnn

#: Tiny settings for every comparison of these tests (synthetic 6x6 images, 3 steps, one process).
TINY = {"steps": 3, "dataset": "synthetic", "width": 4, "batch_size": 16, "eval_every": 2,
        "data_options": {"n": 64, "size": 6}, "workers": 1}
GAINS = ["Backward gain per block", "Cumulative gain from the last block back"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = dx.RunStore(tmp_path_factory.mktemp("gains") / "runs")
    sweep = dx.compare(variants=["plain", "residual"], depth=[2, 3], store=store, **TINY)
    inits = dx.compare(variants={"xavier": {"variant": "plain", "init": "xavier"},
                                 "he": {"variant": "plain", "init": "he"}}, depth=4, store=store, **TINY)
    old = dx.compare(variants=["plain"], depth=3, store=store, blocks=None, **TINY)
    return store, {"sweep": sweep, "inits": inits, "old": old, "cnn": record_cnn(store, "no blocks", steps=3)}


def test_gradient_flow_page_shows_block_gains_and_a_note_for_runs_without(store):
    store, runs = store
    at = open_page(store.root, "pages/gradient_flow.py",
                   selected=[runs["sweep"][("residual", 3)], runs["cnn"]])
    titles = chart_titles(at)
    assert all(t in titles for t in GAINS)
    assert any("No backward gain per block in no blocks" in i.value for i in at.info)
    at.multiselect(key="flow_runs").set_value([runs["cnn"]]).run()
    assert not at.exception and not any(t in chart_titles(at) for t in GAINS)


def select(at, store, runs) -> None:
    group = store.meta(next(iter(runs.values())))["group"]
    at.selectbox(key="compare_group").set_value(group).run()
    assert not at.exception and not at.error


def test_compare_page_draws_a_depth_sweep_and_block_gains_side_by_side(store):
    store, runs = store
    at = open_compare(store.root)
    select(at, store, runs["sweep"])
    titles = chart_titles(at)
    assert all(t in titles for t in GAINS)
    assert "Depth sweep: gradient ratio and accuracy against depth" in titles
    gains = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "cmp_gain_fig" in c.proto.id)
    assert [t["name"][-6:] for t in gains["data"]] == ["step 0"] * 4    # a sweep: step 0 only, a line per run


def test_compare_page_reads_xavier_against_he_at_step_0(store):
    store, runs = store
    at = open_compare(store.root)
    select(at, store, runs["inits"])
    notes = " ".join(i.value for i in at.info)
    assert "under Xavier and" in notes and "*weight*-gradient ratio hides this" in notes


def test_an_older_comparison_without_block_gains_still_renders_with_a_note(store):
    store, runs = store
    at = open_compare(store.root)
    select(at, store, runs["old"])
    assert len(chart_titles(at)) == 4
    assert any("No backward gain per block" in i.value for i in at.info)


def test_a_preset_starts_its_comparison_in_one_click(tmp_path, monkeypatch):
    preset = PRESETS["he2015"]
    tiny = Preset(preset.title, preset.description, {**preset.settings, **TINY, "depth": 3})
    monkeypatch.setitem(PRESETS, "he2015", tiny)
    at = open_compare(tmp_path / "runs")
    at.selectbox(key="cmp_preset").set_value("he2015").run()
    assert any("Delving Deep into Rectifiers" in m.value for m in at.markdown)
    at.button(key="cmp_preset_start").click().run()
    assert not at.exception and not at.error
    job = at.session_state["compare_job"]
    assert job.variants == ["plain · Xavier", "plain · He"]
    assert job.wait(timeout=90) and job.error is None
    at.run()
    assert not at.exception and "Backward gain per block" in chart_titles(at)
    assert any("under Xavier and" in i.value for i in at.info)


def test_the_depth_sweep_field_runs_every_variant_at_every_depth(tmp_path):
    at = open_compare(tmp_path / "runs")
    at.multiselect(key="cmp_variants").set_value(["plain"])
    at.text_input(key="cmp_sweep").set_value("2, 3")
    at.number_input(key="cmp_width").set_value(4)
    at.number_input(key="cmp_steps").set_value(2)
    at.selectbox(key="cmp_dataset").set_value("synthetic")
    at.button(key="FormSubmitter:compare_settings-Start comparison").click().run()
    assert not at.exception and not at.error
    job = at.session_state["compare_job"]
    assert job.variants == ["plain d2", "plain d3"]
    assert job.wait(timeout=90) and job.error is None
    at.run()
    assert not at.exception and len(at.get("progress")) == 0
    assert "Depth sweep: gradient ratio and accuracy against depth" in chart_titles(at)
