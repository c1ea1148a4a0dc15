"""Data from files is data: names render as text in Markdown, plotly and the report; CSV cells are not
formulas; secret-looking metadata is hidden; names and notes are length-limited when saved."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import diagnostics as dx
from diagnostics.views import figures as plots
from diagnostics.views.export import table_bytes
from diagnostics.views.gradient_flow import CachedLoader, FlowOptions, gradient_flow_view
from diagnostics.views.report import html_report
from diagnostics.views.text import csv_cell, markdown_text, mask_secrets, one_line, plotly_text

from tests.recorded import make_store

EVIL = ('![x](http://host/p.png) [Re-login](https://evil.example/)\n# Heading\n'
        '<a href="https://evil.example/">click</a><img src=x onerror=alert(1)>')


def test_one_line_removes_newlines_and_control_characters_and_cuts_long_text():
    assert one_line("a\nb\r\n\tc\x00d") == "a b c d"
    assert one_line("x" * 500, limit=10) == "x" * 9 + "…"


@pytest.mark.parametrize("text", ["[Re-login](https://evil.example/)", "![x](http://host/p.png)", "# Heading",
                                  "<b>bold</b>", "*em* _u_ `code` ~~s~~ $x$ :red[x]"],
                         ids=["link", "image", "heading", "html", "emphasis"])
def test_markdown_text_escapes_every_markdown_and_html_character(text):
    escaped = markdown_text(text)
    assert all(escaped[i - 1] == "\\" for i, c in enumerate(escaped) if c in "[]()!#<>*_`~$:" and i > 0)
    assert not escaped.startswith(("#", "!", "[", "<", "*", "_", "`", "~", "$", ":"))


def test_markdown_text_of_the_issue_name_renders_as_the_same_characters_in_streamlit():
    from streamlit.testing.v1 import AppTest

    def script():
        import streamlit as st

        from diagnostics.views.text import markdown_text

        st.markdown(markdown_text(st.session_state["text"]))

    at = AppTest.from_function(script)
    at.session_state["text"] = EVIL
    at.run()
    shown = at.markdown[0].value
    assert "\n" not in shown and "\\[Re\\-login\\]\\(https\\://evil\\.example/\\)" in shown
    assert "\\<a href" in shown and "\\!\\[x\\]" in shown


def test_plotly_text_escapes_html_so_no_link_or_tag_is_live():
    assert plotly_text('<a href="https://e/">x</a>\nnext') == "&lt;a href=&quot;https://e/&quot;&gt;x&lt;/a&gt; next"


@pytest.mark.parametrize("cell", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"])
def test_csv_cells_starting_like_a_formula_are_neutralised(cell):
    assert csv_cell(cell) == "'" + cell
    text = table_bytes(pd.DataFrame({"name": [cell], "value": [-1.5]}), "csv").decode()
    assert "'" + cell in text and text.rstrip().endswith(",-1.5")        # numbers stay numbers


def test_csv_cells_that_are_not_formulas_are_unchanged():
    assert csv_cell("conv1") == "conv1" and csv_cell(-3) == -3 and csv_cell("a=b") == "a=b"


def test_secret_looking_metadata_keys_are_masked_at_any_depth():
    meta = {"wandb_api_key": "abc", "db_password": "p", "hyper_parameters": {"lr": 0.1, "HF_TOKEN": "t",
            "client_secret": "s"}, "runs": [{"aws_secret_access_key": "k"}], "epoch": 3}
    masked = mask_secrets(meta)
    assert masked["epoch"] == 3 and masked["hyper_parameters"]["lr"] == 0.1
    assert "abc" not in json.dumps(masked) and "\"p\"" not in json.dumps(masked)
    assert all(v == "••• (hidden)" for v in (masked["wandb_api_key"], masked["db_password"],
                                            masked["hyper_parameters"]["HF_TOKEN"],
                                            masked["hyper_parameters"]["client_secret"],
                                            masked["runs"][0]["aws_secret_access_key"]))


@pytest.fixture(scope="module")
def evil_store(tmp_path_factory):
    store, runs = make_store(tmp_path_factory.mktemp("store") / "runs")
    store.rename(runs["plain"], EVIL[:200])
    return store, runs


def _labels(fig) -> list[str]:
    """Every text plotly renders as (pseudo-)HTML: trace names, titles, subplot titles, category ticks."""
    layout = fig.layout
    texts = [t.name or "" for t in fig.data] + [str(layout.title.text or "")]
    texts += [a.text or "" for a in layout.annotations]
    texts += [str(v) for t in fig.data if getattr(t, "type", "") == "heatmap" and t.y is not None for v in t.y]
    return texts


def test_a_malicious_run_name_is_inert_in_every_figure_and_in_the_html_report(evil_store):
    store, runs = evil_store
    ids = [runs["plain"], runs["bn"]]
    name = store.meta(runs["plain"])["name"]
    names = {r: store.meta(r)["name"] for r in ids}
    view = gradient_flow_view(CachedLoader(store), FlowOptions(ids), plots.run_colors(ids), names)
    labels = [text for fig in view.figures.values() for text in _labels(fig)]
    assert any("&lt;a href=&quot;https://evil.example/&quot;&gt;" in t for t in labels)   # the name is there...
    assert not any("<a " in t or "<img" in t or "\n" in t for t in labels)                 # ...as text only
    report = html_report(name, {"run": name}, [], list(view.figures.values()))
    assert "<a href=\"https://evil.example/\">" not in report and "<img src=x" not in report
    assert "&amp;lt;a href=" in report or "&lt;a href=" in report


@pytest.mark.parametrize("change, match", [
    (lambda s, r: s.rename(r, "n" * 201), "at most 200 characters"),
    (lambda s, r: s.set_notes(r, "n" * 10_001), "at most 10,000 characters"),
    (lambda s, r: s.set_tags(r, [f"t{i}" for i in range(51)]), "at most 50 tags"),
    (lambda s, r: s.set_tags(r, ["t" * 101]), "at most 100 characters"),
], ids=["name", "notes", "tag-count", "tag-length"])
def test_names_notes_and_tags_are_length_limited_when_saved(tmp_path, change, match):
    import torch

    store = dx.RunStore(tmp_path / "runs")
    model = torch.nn.Linear(2, 1)
    with dx.GradientMonitor(model, store=store, run_name="kept") as mon:
        model(torch.randn(3, 2)).sum().backward()
        mon.step()
    with pytest.raises(dx.StoreError, match=match):
        change(store, mon.run_id)
    assert store.meta(mon.run_id)["name"] == "kept"
    store.rename(mon.run_id, "n" * 200)
    assert store.meta(mon.run_id)["name"] == "n" * 200
