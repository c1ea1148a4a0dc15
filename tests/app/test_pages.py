"""Every dashboard page under AppTest, against a temporary store holding real recorded runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import diagnostics as dx

from tests.recorded import make_store

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "runs")


def open_page(root: Path, page: str | None = None, selected: list[str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["store_root"] = str(root)
    if selected is not None:
        at.session_state["selected_runs"] = selected
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_gradient_flow_page_draws_every_chart_for_overlaid_runs(recorded):
    store, runs = recorded
    at = open_page(store.root, "pages/gradient_flow.py", selected=[runs["plain"], runs["bn"]])
    assert at.multiselect(key="flow_runs").value == [runs["plain"], runs["bn"]]
    charts = at.get("plotly_chart")
    assert len(charts) == 8
    assert not at.error
    at.selectbox(key="flow_stat").set_value("act_grad_norm").run()
    at.radio(key="flow_scale").set_value("linear").run()
    at.slider(key="flow_step").set_value(4).run()
    at.checkbox(key="flow_first").check().run()
    at.multiselect(key="flow_layers").set_value(["0", "2"]).run()
    at.radio(key="flow_hist_kind").set_value("act_grad").run()
    assert not at.exception and len(at.get("plotly_chart")) == 8


def test_gradient_flow_page_with_a_one_step_run_explains_itself(recorded):
    store, runs = recorded
    at = open_page(store.root, "pages/gradient_flow.py", selected=[runs["mlp"]])
    assert any("one recorded step" in c.value for c in at.caption)
    assert not at.exception


def test_gradient_flow_page_says_when_a_run_did_not_record_the_statistic(tmp_path):
    import torch
    from torch import nn

    store = dx.RunStore(tmp_path / "runs")
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with dx.GradientMonitor(model, store=store, run_name="weights-only", activations=False) as mon:
        for _ in range(3):
            model(torch.randn(3, 4)).pow(2).mean().backward()
            mon.step()
            model.zero_grad()
    at = open_page(store.root, "pages/gradient_flow.py", selected=[mon.run_id])
    assert not any("not recorded" in i.value for i in at.info)      # weight-gradient norm is there
    at.selectbox(key="flow_stat").set_value("act_mean").run()
    assert any("not recorded" in i.value and "activations=False" in i.value for i in at.info)
    assert not at.exception


def test_gradient_flow_thresholds_change_the_findings(recorded):
    store, runs = recorded
    at = open_page(store.root, "pages/gradient_flow.py", selected=[runs["plain"]])
    before = [e.value for e in at.warning] + [e.value for e in at.error]
    at.number_input(key="flow_t_vanishing").set_value(1.0).run()     # vanishing: first/last below 1
    at.number_input(key="flow_t_exploding").set_value(1.0).run()     # exploding across depth: above 1
    at.slider(key="flow_t_persist").set_value(0.5).run()             # ... on half the steps: one of them holds
    after = [e.value for e in at.warning] + [e.value for e in at.error]
    assert any("gradients across depth" in m and "Fix" in m for m in after)
    assert after != before


def test_kernel_page_shows_three_grids_and_pages(recorded):
    store, runs = recorded
    at = open_page(store.root, "pages/kernels.py", selected=[runs["plain"]])
    assert len(at.get("plotly_chart")) == 3                 # ∂L/∂W, W and ΔW
    assert at.selectbox(key="kernel_layer").options == ["0", "4"] or len(at.selectbox(key="kernel_layer").options) >= 2
    at.select_slider(key="kernel_per_page").set_value(4).run()
    at.number_input(key="kernel_out_page").set_value(2).run()
    assert not at.exception and len(at.get("plotly_chart")) == 3
    assert len(at.dataframe) == 3                           # one tile's numbers, per kind


def test_kernel_page_explains_a_run_without_conv_layers(recorded):
    store, runs = recorded
    at = open_page(store.root, "pages/kernels.py", selected=[runs["mlp"]])
    assert any("no kernel snapshots" in i.value for i in at.info)


@pytest.mark.parametrize("page", ["pages/gradient_flow.py", "pages/kernels.py"], ids=["flow", "kernels"])
def test_pages_on_an_empty_store_explain_how_to_start(tmp_path, page):
    at = open_page(tmp_path / "empty", page)
    assert any("No runs yet" in i.value for i in at.info)


def test_runs_page_renames_tags_and_deletes_with_confirmation(tmp_path):
    store, runs = make_store(tmp_path / "runs")
    at = open_page(store.root, selected=[runs["mlp"]])
    assert at.selectbox(key="manage_run").value == runs["mlp"]
    run = runs["mlp"]
    at.text_input(key=f"name_{run}").set_value("renamed mlp")
    at.text_input(key=f"tags_{run}").set_value("baseline, small")
    at.text_area(key=f"notes_{run}").set_value("a note")
    at.button(key=f"save_{run}").click().run()
    meta = store.meta(runs["mlp"])
    assert (meta["name"], meta["tags"], meta["notes"]) == ("renamed mlp", ["baseline", "small"], "a note")
    delete = at.button(key=f"delete_{runs['mlp']}")
    assert delete.disabled                                   # not before confirming
    at.checkbox(key=f"confirm_{runs['mlp']}").check().run()
    at.button(key=f"delete_{runs['mlp']}").click().run()
    assert runs["mlp"] not in store.run_ids() and len(store.run_ids()) == 2
    assert not at.exception


def test_a_corrupt_run_is_reported_and_the_page_keeps_working(tmp_path):
    store, runs = make_store(tmp_path / "runs")
    chunk = next((store.root / runs["plain"] / "layers").iterdir())
    chunk.write_bytes(b"not parquet")
    at = open_page(store.root, "pages/gradient_flow.py", selected=[runs["plain"]])
    assert any("Could not" in e.value for e in at.error)
    at.multiselect(key="flow_runs").set_value([runs["bn"]]).run()
    assert not at.exception and len(at.get("plotly_chart")) == 8
    assert isinstance(dx.RunStore(store.root).frame(runs["bn"]), object)


def test_one_unreadable_run_never_blanks_the_others(tmp_path):
    store, runs = make_store(tmp_path / "runs")
    chunk = next((store.root / runs["plain"] / "layers").iterdir())
    chunk.write_bytes(b"not parquet")
    at = open_page(store.root, "pages/gradient_flow.py", selected=[runs["plain"], runs["bn"]])
    assert len(at.error) == 1 and "Could not read run" in at.error[0].value    # a StoreError: a message
    assert not at.exception and len(at.get("plotly_chart")) == 8               # the readable run is drawn


def test_guard_shows_library_errors_as_messages_and_other_errors_as_bugs():
    def script():
        import streamlit as st

        import diagnostics as dx
        from ui.common import guard

        with guard("read run x") as first:
            raise dx.StoreError("no run 'x'")
        with guard("draw") as second:
            raise KeyError("a bug")
        st.write(f"went on: {first.failed} {second.failed}")

    at = AppTest.from_function(script, default_timeout=60).run()
    assert [e.value for e in at.error] == ["Could not read run x: no run 'x'"]
    bug = at.exception[0]                                                         # shown with its traceback
    assert len(at.exception) == 1 and bug.value == "'a bug'" and 'raise KeyError("a bug")' in bug.stack_trace[-1]
    assert at.markdown[0].value == "went on: True True"


def test_a_run_still_being_written_refreshes_with_its_new_steps(tmp_path):
    import torch
    from torch import nn

    store = dx.RunStore(tmp_path / "runs")
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))

    def steps(mon, n):
        for _ in range(n):
            model(torch.randn(2, 3)).pow(2).sum().backward()
            mon.step()
            model.zero_grad()

    with dx.GradientMonitor(model, store=store, run_name="live", flush_every=1) as mon:
        steps(mon, 3)
        at = open_page(store.root, "pages/gradient_flow.py", selected=[mon.run_id])
        assert any("still being written" in c.value for c in at.caption)
        assert at.slider(key="flow_step").max == 2
        steps(mon, 4)
        at.run()
        assert at.slider(key="flow_step").max == 6                # new steps appear without a reload
    at.run()
    assert not any("still being written" in c.value for c in at.caption)


def test_junk_in_the_store_folder_gives_one_summary_warning(tmp_path):
    store, runs = make_store(tmp_path / "runs")
    for i in range(8):
        (store.root / f"junk-{i}").mkdir()
    (store.root / "notes.txt").write_text("not a run")
    at = open_page(store.root)
    assert len(at.warning) == 1 and "9 entries" in at.warning[0].value and "and 4 more" in at.warning[0].value
    assert len(at.dataframe[0].value) == 3                    # the real runs are still listed


def test_runs_page_shows_which_framework_recorded_a_run(tmp_path):
    import torch

    store = dx.RunStore(tmp_path / "runs")
    model = torch.nn.Linear(2, 1)
    for meta in ({"framework": "lightning"}, {}):
        with dx.GradientMonitor(model, store=store, meta=meta) as mon:
            model(torch.randn(3, 2)).sum().backward()
            mon.step()
    at = open_page(store.root)
    table = at.dataframe[0].value
    assert sorted(table["framework"]) == ["lightning", "own loop"]
