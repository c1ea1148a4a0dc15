"""The Gradient checks page under AppTest: option combinations, heatmaps, the duality, friendly errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from diagnostics.views.catalogue import LAYERS

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
PAGE = "pages/checks.py"

#: The page is not registered in app.py's navigation yet. Once it is, set this to True: the tests then open
#: app.py and switch to the page, as tests/app/test_pages.py does.
ROUTED = True


def open_checks_page() -> AppTest:
    if ROUTED:
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        at.switch_page(PAGE)
    else:
        at = AppTest.from_file(str(ROOT / PAGE), default_timeout=120)
        at.session_state["_gfd_routed"] = True  # what app.py's mark_routed() does, so require_router() passes
    at.run()
    assert not at.exception, at.exception
    return at


def report_of(at: AppTest):
    return at.dataframe[0].value


def assert_checked(at: AppTest, charts: int) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert any("Every comparison agrees" in s.value for s in at.success)
    report = report_of(at)
    assert set(report["status"]) <= {"pass", "skipped"}, report.to_string()
    assert len(at.get("plotly_chart")) == charts


def test_conv2d_default_shows_formulas_errors_heatmaps_and_the_duality():
    at = open_checks_page()
    assert at.selectbox(key="chk_layer").value == "conv2d"
    assert_checked(at, charts=2)                               # ∂L/∂X and ∂L/∂W
    report = report_of(at)
    assert set(zip(report.tensor, report.reference)) == {(t, r) for t in ("input", "weight", "bias")
                                                         for r in ("autograd", "finite_diff")}
    latex = [element.value for element in at.latex]
    assert any(r"\operatorname{rot}_{180}(W)" in value for value in latex)
    assert any(r"output\_padding" in value for value in latex)   # the ConvTranspose2d output size
    assert len(latex) == 4 + 2                                 # forward, 3 gradients, 2 output-size formulas
    assert len(at.dataframe) == 3                              # report, conv output sizes, duality arithmetic
    assert [m.label for m in at.metric] == ["max |difference|", "relative to max |gradient|"]
    assert float(at.metric[1].value) < 1e-12


def test_conv2d_with_stride_reflect_padding_and_groups():
    at = open_checks_page()
    at.number_input(key="chk_channels").set_value(4).run()
    at.number_input(key="chk_conv2d_out_channels").set_value(6).run()
    at.number_input(key="chk_conv2d_stride_h").set_value(2)
    at.number_input(key="chk_conv2d_stride_w").set_value(2)
    at.selectbox(key="chk_conv2d_padding_mode").set_value("reflect")
    at.number_input(key="chk_conv2d_groups").set_value(2).run()
    assert_checked(at, charts=2)
    assert "groups=2" in at.markdown[1].value and "padding_mode=reflect" in at.markdown[1].value
    at.number_input(key="chk_sample").set_value(1)
    at.number_input(key="chk_channel").set_value(3)
    at.number_input(key="chk_weight_first").set_value(5).run()  # another heatmap slice, same check
    assert_checked(at, charts=2)
    assert float(at.metric[1].value) < 1e-12


def test_depthwise_same_padding_with_the_reference_implementation():
    at = open_checks_page()
    at.radio(key="chk_impl").set_value("reference")
    at.checkbox(key="chk_conv2d_depthwise").check()
    at.number_input(key="chk_conv2d_out_channels").set_value(6)
    at.selectbox(key="chk_conv2d_padding_kind").set_value("same").run()
    assert_checked(at, charts=2)
    assert set(report_of(at)["impl"]) == {"reference"}
    assert any("groups = 3" in c.value for c in at.caption)


def test_maxpool2d_with_ceil_mode_has_no_weight():
    at = open_checks_page()
    at.selectbox(key="chk_layer").set_value("maxpool2d").run()
    at.checkbox(key="chk_maxpool2d_ceil_mode").check()
    at.number_input(key="chk_width").set_value(8).run()
    assert_checked(at, charts=1)                               # ∂L/∂X only
    assert set(report_of(at)["tensor"]) == {"input"}
    assert "ceil_mode=True" in at.markdown[1].value
    assert any(r"\arg\max" in element.value for element in at.latex)
    assert not at.metric                                       # no duality for pools


def test_convtranspose2d_shows_that_its_forward_is_a_convolutions_input_gradient():
    at = open_checks_page()
    at.selectbox(key="chk_layer").set_value("convtranspose2d").run()
    at.number_input(key="chk_convtranspose2d_output_padding_h").set_value(0)
    at.number_input(key="chk_convtranspose2d_dilation_w").set_value(2).run()
    assert_checked(at, charts=2)
    assert any(r"output\_padding" in element.value for element in at.latex)
    assert float(at.metric[1].value) < 1e-12
    assert any("input-gradient" in c.value for c in at.caption)


def test_batch_norm_in_eval_mode_and_an_empty_batch():
    at = open_checks_page()
    at.selectbox(key="chk_layer").set_value("batchnorm2d").run()
    at.radio(key="chk_batchnorm2d_mode").set_value("eval").run()
    assert_checked(at, charts=2)                               # ∂L/∂X and ∂L/∂gamma
    assert "running statistics" in at.markdown[2].value
    at.number_input(key="chk_batch").set_value(0).run()
    assert not at.exception and not at.error
    assert any("empty" in i.value for i in at.info)


@pytest.mark.parametrize("changes, reason", [
    ({"chk_conv2d_padding_kind": "same", "chk_conv2d_stride_h": 2},
     "padding='same' is not supported for strided convolutions"),
    ({"chk_conv2d_groups": 2}, "in_channels must be divisible by groups"),
    ({"chk_conv2d_kernel_w": 9}, "Kernel size can't be greater than actual input size"),   # W + 2 = 8 < 9
], ids=["same-with-stride", "groups-not-dividing", "kernel-too-large"])
def test_an_invalid_combination_shows_pytorchs_reason_without_a_traceback(changes, reason):
    at = open_checks_page()
    for key, value in changes.items():
        widget = at.selectbox(key=key) if key.endswith("_kind") else at.number_input(key=key)
        widget.set_value(value)
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and reason in at.error[0].value
    assert at.error[0].value.startswith("This combination does not work.")
    assert not at.get("plotly_chart")


@pytest.mark.parametrize("layer", [key for key in LAYERS if key not in ("conv2d", "maxpool2d", "convtranspose2d")])
def test_every_other_layer_type_renders_its_check(layer):
    at = open_checks_page()
    at.selectbox(key="chk_layer").set_value(layer).run()
    assert not at.error, [e.value for e in at.error]
    has_weight = LAYERS[layer].channel_arg is not None          # conv1d, linear, batch norm
    assert ("weight" in set(report_of(at)["tensor"])) == has_weight
    assert_checked(at, charts=2 if has_weight else 1)
    assert len(at.latex) >= 2
