"""A damaged run beside good ones: every page that lists runs says which one and why, and draws the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.recorded import make_store

APP = str(Path(__file__).resolve().parents[2] / "app.py")

#: Each damage the issue names: wrong types, NaN, deep nesting.
DAMAGE = {
    "wrong-types": lambda meta: {**meta, "steps": "many", "created": "yesterday", "tags": 7},
    "nan": lambda meta: {**meta, "parameters": float("nan")},
    "deep-nesting": lambda meta: {**meta, "config": json.loads("[" * 5000 + "]" * 5000)},
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "runs")


def damage(root: Path, run: str, how: str) -> None:
    path = root / run / "meta.json"
    meta = json.loads(path.read_text())
    if how == "deep-nesting":       # json.dumps itself refuses this depth, so the text is written by hand
        path.write_text(json.dumps({**meta, "config": None}).replace('"config": null', '"config": '
                                                                      + "[" * 5000 + "]" * 5000))
    else:
        path.write_text(json.dumps(DAMAGE[how](meta)))                     # NaN is written as the bare NaN


@pytest.mark.parametrize("how", list(DAMAGE))
@pytest.mark.parametrize("page", ["pages/home.py", "pages/gradient_flow.py", "pages/kernels.py"])
def test_a_damaged_run_is_named_with_its_reason_and_the_others_render(recorded, tmp_path, page, how):
    import shutil

    store, runs = recorded
    root = tmp_path / "runs"
    shutil.copytree(store.root, root)
    damage(root, runs["mlp"], how)
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["store_root"] = str(root)
    at.session_state["selected_runs"] = [runs["plain"], runs["mlp"]]
    at.run()
    if page != "pages/home.py":
        at.switch_page(page).run()
    assert not at.exception, at.exception
    warnings = [w.value.replace("\\", "") for w in at.warning]               # as rendered (reasons are escaped)
    assert any(runs["mlp"] in w and "meta.json" in w for w in warnings), warnings
    if page == "pages/home.py":
        assert sorted(at.dataframe[0].value["run"]) == sorted([runs["plain"], runs["bn"]])
    else:
        assert len(at.get("plotly_chart")) > 0                                # the good run is drawn


def test_a_run_deleted_on_the_runs_page_is_restored_from_its_trash(tmp_path):
    store, runs = make_store(tmp_path / "runs")
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["store_root"] = str(store.root)
    at.session_state["selected_runs"] = [runs["mlp"]]
    at.run()
    assert not [e for e in at.expander if e.label.startswith("Deleted runs")]       # empty trash: not shown
    at.checkbox(key=f"confirm_{runs['mlp']}").check().run()
    at.button(key=f"delete_{runs['mlp']}").click().run()
    assert runs["mlp"] not in store.run_ids() and len(at.dataframe[0].value) == 2
    assert at.selectbox(key="trash_run").value == runs["mlp"]
    at.button(key="trash_restore").click().run()
    assert not at.exception, at.exception
    assert runs["mlp"] in store.run_ids() and len(at.dataframe[0].value) == 3
    assert store.trashed().empty


def test_emptying_the_trash_on_the_runs_page_needs_confirmation(tmp_path):
    store, runs = make_store(tmp_path / "runs")
    store.delete(runs["mlp"])
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["store_root"] = str(store.root)
    at.run()
    assert at.button(key="trash_empty").disabled                       # not before confirming
    at.checkbox(key="trash_confirm").check().run()
    at.button(key="trash_empty").click().run()
    assert not at.exception, at.exception
    assert store.trashed().empty and runs["mlp"] not in store.run_ids()
    assert not [e for e in at.expander if e.label.startswith("Deleted runs")]


def test_the_reason_of_a_damaged_run_quotes_its_contents_as_text(tmp_path):
    store, runs = make_store(tmp_path / "runs")
    path = store.root / runs["mlp"] / "meta.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "name": ["[Re-login](https://evil.example/)"]}))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["store_root"] = str(store.root)
    at.run()
    warning = next(w.value for w in at.warning if runs["mlp"] in w.value.replace("\\", ""))
    assert "[Re-login](" not in warning and "\\[Re\\-login\\]" in warning
