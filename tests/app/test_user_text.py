"""A run named with Markdown, HTML and newlines shows as those characters on the pages, never as markup."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.recorded import make_store

APP = str(Path(__file__).resolve().parents[2] / "app.py")
EVIL = '![x](http://host/p.png) [Re-login](https://evil.example/)\n# Heading <a href="https://evil.example/">click</a>'


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    store, runs = make_store(tmp_path_factory.mktemp("store") / "runs")
    store.rename(runs["plain"], EVIL)
    return store, runs


def open_page(root: Path, page: str | None, selected: list[str]) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["store_root"] = str(root)
    at.session_state["selected_runs"] = selected
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_the_runs_page_shows_the_name_as_text_in_labels(evil):
    store, runs = evil
    at = open_page(store.root, None, [runs["plain"]])
    label = next(c.label for c in at.checkbox if c.label.startswith("Yes, delete run"))
    assert "\n" not in label and "\\[Re\\-login\\]\\(https\\://evil\\.example/\\)" in label
    assert "\\<a href" in label and "\\!\\[x\\]" in label


def test_the_gradient_flow_page_keeps_the_name_out_of_markup(evil):
    store, runs = evil
    at = open_page(store.root, "pages/gradient_flow.py", [runs["plain"], runs["bn"]])
    specs = [chart.proto.spec for chart in at.get("plotly_chart")]
    assert specs and any("&lt;a href=" in s for s in specs)              # the name is drawn, escaped
    assert not any('<a href=\\"https://evil' in s or "<a href=\"https://evil" in s for s in specs)
    labels = [b.label for b in at.button if b.label.startswith("Prepare TensorBoard")]
    assert len(labels) == 1 and "\n" not in labels[0] and "\\[Re\\-login\\]" in labels[0]
    assert any(m.value.startswith("\\!\\[x\\]") for m in at.success)       # "no problems found" names it


def test_the_checkpoint_page_shows_file_names_as_text_and_hides_secret_metadata(tmp_path):
    import io

    import torch

    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["store_root"] = str(tmp_path / "runs")
    at.run()
    at.switch_page("pages/checkpoint.py").run()
    buf = io.BytesIO()
    torch.save({"state_dict": {"w.weight": torch.randn(3, 2)}, "wandb_api_key": "abc123",
                "config": {"db_password": "hunter2", "lr": 0.1}}, buf)
    at.file_uploader(key="ckpt_files").set_value([
        ("[Re-login](https://evil.example/).pt", buf.getvalue(), "application/octet-stream"),
        ("![x](http://host/p.png).pt", b"not a checkpoint", "application/octet-stream")]).run()
    assert not at.exception, at.exception
    bodies = [j.proto.body for j in at.get("json")]
    assert bodies and "abc123" not in "".join(bodies) and "hunter2" not in "".join(bodies)
    assert "0.1" in "".join(bodies) and "(hidden)" in "".join(bodies)
    errors = [e.value for e in at.error]
    assert any(e.startswith("Could not load it: \\!\\[x\\]\\(http") for e in errors), errors
    warnings = [w.value for w in at.warning]
    assert warnings and all("[Re-login](" not in w for w in warnings)


def test_findings_and_the_gain_note_show_a_crafted_run_name_as_text(tmp_path):
    import torch

    import diagnostics as dx

    store = dx.RunStore(tmp_path / "runs")
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=10.0)                 # updates far too large: a finding
    name = "run [click](http://evil.example) **bold**"
    with dx.GradientMonitor(model, store=store, run_name=name, optimizer=opt) as mon:
        for _ in range(25):
            model(torch.randn(4, 3)).sum().backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=120)
    at.session_state["store_root"] = str(store.root)
    at.session_state["selected_runs"] = [mon.run_id]
    at.run()
    at.switch_page("pages/gradient_flow.py").run()
    assert not at.exception
    texts = [e.value for e in (*at.warning, *at.error, *at.info)]
    assert any("No backward gain" in t for t in texts)
    named = [t for t in texts if "click" in t]
    assert named and all("\\[click\\]\\(http" in t for t in named)        # escaped: no live link
