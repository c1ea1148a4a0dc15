"""A shared dashboard under AppTest: every typed path outside the launch roots is refused with one message whether
or not it exists (store, checkpoint path, dataset and image folders), read-only mode, the token gate, and the
compute queue shared by two sessions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import diagnostics as dx

APP = str(Path(__file__).resolve().parents[2] / "app.py")
#: An existing folder and file outside every root, and paths beside them that do not exist.
OUTSIDE = {"folder": ("/etc", "/etc-gfd-missing"), "file": ("/etc/passwd", "/etc/gfd-missing.pt")}


def open_page(store: Path, page: str | None = None, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["store_root"] = str(store)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def token_field(at: AppTest) -> bool:
    return any(t.key == "gfd_token_field" for t in at.text_input)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in [*at.error, *at.sidebar.error]]


def same_refusal(first: list[str], second: list[str], paths: tuple[str, str]) -> str:
    """The one refusal of each run, equal once the typed path is taken out; returns it."""
    assert len(first) == len(second) == 1, (first, second)
    a, b = (re.sub(r"'[^']*'", "<path>", message[0], count=1) for message in (first, second))
    assert a == b and "was not opened" in a and paths[0] not in a
    return a


@pytest.fixture(autouse=True)
def _error_details_restored():
    """The gate sets Streamlit's process-wide ``client.showErrorDetails`` when shared; later tests get it back."""
    from streamlit import config

    before = config.get_option("client.showErrorDetails")
    yield
    config.set_option("client.showErrorDetails", before)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("GFD_STORE", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_a_store_folder_outside_the_roots_is_refused_and_the_launch_store_shown(store):
    seen = []
    for path in OUTSIDE["folder"]:
        at = open_page(Path(path))                                     # as typed into the sidebar's store field
        assert not at.exception
        seen.append([e.value for e in at.sidebar.error])
        assert any(str(store) in i.value for i in at.info)            # the launch store is read instead
    same_refusal(*seen, OUTSIDE["folder"])


def test_a_checkpoint_path_outside_the_roots_is_refused_the_same_whether_or_not_it_exists(store):
    seen = []
    for path in OUTSIDE["file"]:
        at = open_page(store, "pages/checkpoint.py")
        at.text_input(key="ckpt_path").set_value(path).run()
        assert not at.exception
        seen.append(errors(at))
    message = same_refusal(*seen, OUTSIDE["file"])
    assert "root:" not in message                                    # nothing of /etc/passwd is shown


def test_a_dataset_folder_outside_the_roots_is_refused_before_anything_is_queued(store):
    seen = []
    for path in OUTSIDE["folder"]:
        at = open_page(store, "pages/compare.py")
        at.selectbox(key="cmp_dataset").set_value("folder")
        at.text_input(key="cmp_root").set_value(path)
        at.button(key="FormSubmitter:compare_settings-Start comparison").click().run()
        assert not at.exception and "compare_job" not in at.session_state
        seen.append(errors(at))
    same_refusal(*seen, OUTSIDE["folder"])


def test_a_probe_image_folder_outside_the_roots_is_refused(store, tmp_path):
    config = dx.variant_config("plain", depth=2, width=2)
    dx.save_checkpoint(dx.build_cnn(config), config, tmp_path / "tiny.pt")
    seen = []
    for path in OUTSIDE["folder"]:
        at = open_page(store, "pages/checkpoint.py")
        at.text_input(key="ckpt_path").set_value(str(tmp_path / "tiny.pt")).run()
        at.text_input(key="ckpt_folder").set_value(path).run()
        assert not at.exception
        seen.append(errors(at))
    same_refusal(*seen, OUTSIDE["folder"])


def test_read_only_mode_offers_no_training_rename_delete_or_typed_paths(store, tmp_path, monkeypatch):
    monkeypatch.setenv("GFD_READ_ONLY", "1")
    dx.compare(variants=["plain"], depth=2, steps=2, dataset="synthetic", width=2, batch_size=8, store=str(store))
    runs = open_page(store)
    assert runs.sidebar.text_input(key="store_root").disabled
    assert any("Renaming, tagging and deleting runs is turned off" in i.value for i in runs.info)
    assert not [b for b in runs.button if "Delete" in b.label or "Save" in b.label]
    compare = open_page(store, "pages/compare.py")
    assert any("Training is turned off" in i.value for i in compare.info)
    assert not [b for b in compare.button if "Start" in b.label]
    ckpt = open_page(store, "pages/checkpoint.py")
    ckpt.text_input(key="ckpt_path").set_value(str(tmp_path / "model.pt")).run()
    assert any("A checkpoint path typed on the server is turned off" in e for e in errors(ckpt))


@pytest.mark.parametrize("given,opens", [(None, False), ("wrong", False), ("s3cret-token", True)],
                         ids=["no-token", "wrong-token", "right-token"])
def test_a_token_is_required_before_any_page(store, monkeypatch, given, opens):
    monkeypatch.setenv("GFD_TOKEN", "s3cret-token")
    at = open_page(store, **({"token": given} if given else {}))
    titles = [t.value for t in at.title]
    assert "Gradient Flow Diagnostics" in titles and token_field(at) is not opens
    assert bool(at.expander) is opens                     # the Runs page's sections only with the token
    if given == "wrong":
        assert "That is not the token." in errors(at)


def test_the_token_form_opens_the_dashboard(store, monkeypatch):
    monkeypatch.setenv("GFD_TOKEN", "s3cret-token")
    at = open_page(store)
    at.text_input(key="gfd_token_field").set_value("s3cret-token")
    at.button(key="FormSubmitter:gfd_token-Open the dashboard").click().run()
    assert not at.exception and not token_field(at)
    assert at.expander and not errors(at)


def start_tiny_comparison(store: Path) -> AppTest:
    at = open_page(store, "pages/compare.py")
    at.multiselect(key="cmp_variants").set_value(["plain"])
    at.slider(key="cmp_depth").set_value(2)
    at.number_input(key="cmp_width").set_value(2)
    at.number_input(key="cmp_steps").set_value(3)
    at.button(key="FormSubmitter:compare_settings-Start comparison").click().run()
    assert not at.exception and not errors(at)
    return at


def waiting(at: AppTest) -> list[str]:
    return [i.value for i in at.info if i.value.startswith("Waiting for its turn")]


def test_two_sessions_share_one_compute_queue_with_positions_and_cancel(store):
    import threading

    from ui.access import compute_queue

    release = threading.Event()
    busy = compute_queue().submit("someone", "a job already running", 1.0, lambda: release.wait(60))
    try:
        first, second = start_tiny_comparison(store), start_tiny_comparison(store)
        assert waiting(first) == ["Waiting for its turn: number 1 in this dashboard's queue (one job runs at a "
                                  "time, for every visitor)."]
        assert "number 2" in waiting(second)[0]
        assert any("GMAC (10⁹ multiply-adds) of this dashboard's limit" in c.value for c in second.caption)
        second.button(key="cmp_cancel").click().run()
        second.run()
        assert any("The comparison was cancelled" in i.value for i in second.info)
        first.run()
        assert "number 1" in waiting(first)[0]                      # the cancelled one no longer counts
    finally:
        release.set()
    assert busy.wait(10)
    job = first.session_state["compare_job"]
    assert job.wait(60) and job.error is None
    first.run()
    assert not first.exception and not waiting(first) and first.selectbox(key="compare_group").value == job.group


def test_the_largest_gradient_check_is_refused_before_it_runs(store):
    import time

    at = open_page(store, "pages/checks.py")
    for key, value in {"chk_batch": 8, "chk_channels": 16, "chk_height": 32, "chk_width": 32,
                       "chk_conv2d_out_channels": 32, "chk_conv2d_kernel_h": 9, "chk_conv2d_kernel_w": 9,
                       "chk_conv2d_padding_h": 4, "chk_conv2d_padding_w": 4}.items():
        at.number_input(key=key).set_value(value)
    started = time.perf_counter()
    at.run()
    assert time.perf_counter() - started < 10                         # was 26-54 s of CPU before the limit
    assert not at.exception
    assert any("needs about 133 GMAC" in e and "limit of 20 GMAC" in e for e in errors(at)), errors(at)


def test_the_upload_limit_keeps_an_upload_held_three_times_under_the_memory_budget():
    import tomllib

    from diagnostics.checkpoints.budget import DEFAULT_BUDGET_MB

    config = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text())
    assert 3 * config["server"]["maxUploadSize"] <= DEFAULT_BUDGET_MB


def test_the_issues_comparison_is_refused_over_the_limit_before_anything_trains(store):
    at = open_page(store, "pages/compare.py")
    at.slider(key="cmp_depth").set_value(100)
    at.number_input(key="cmp_width").set_value(256)
    at.number_input(key="cmp_steps").set_value(20_000)
    at.button(key="FormSubmitter:compare_settings-Start comparison").click().run()
    assert not at.exception and "compare_job" not in at.session_state
    assert any("needs about 61,703,248 GMAC" in e and "limit of 10,000 GMAC" in e for e in errors(at)), errors(at)


def bug_page():
    from ui.common import guard

    with guard("draw the page"):
        raise RuntimeError("boom in /srv/secret/path.py")


@pytest.mark.parametrize("shared", [False, True], ids=["local", "read-only"])
def test_a_bug_shows_its_traceback_locally_and_only_its_message_when_shared(store, monkeypatch, shared):
    from streamlit import config

    if shared:
        monkeypatch.setenv("GFD_READ_ONLY", "1")
    at = AppTest.from_function(bug_page, default_timeout=60)
    at.run()
    if shared:
        assert not at.exception
        assert errors(at) == ["An unexpected error (RuntimeError): boom in /srv/secret/path.py"]
    else:
        assert len(at.exception) == 1 and at.exception[0].stack_trace
    before = config.get_option("client.showErrorDetails")
    open_page(store)                                    # the router's gate sets Streamlit's own error details
    assert config.get_option("client.showErrorDetails") == ("type" if shared else before)
