"""The Gradient checks view: layers from options (catalogue), checks, formulas and heatmaps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diagnostics.manual as manual
from diagnostics.views import catalogue
from diagnostics.views import checks as cv
from diagnostics.views import figures
from diagnostics.views.figures import DIVERGING


def test_every_layer_type_with_a_manual_rule_is_offered_and_has_examples():
    assert sorted(spec.cls.__name__ for spec in catalogue.LAYERS.values()) == \
        sorted(t.__name__ for t in manual.supported_module_types())
    assert list(cv.EXAMPLES) == list(catalogue.LAYERS)
    assert all(cv.EXAMPLES[key] for key in catalogue.LAYERS)


@pytest.mark.parametrize("key", list(catalogue.LAYERS))
def test_build_layer_with_the_defaults(key):
    module = catalogue.build_layer(key, {}, channels=3)
    spec = catalogue.LAYERS[key]
    assert type(module) is spec.cls and module.training
    if spec.channel_arg is not None:
        assert getattr(module, spec.channel_arg) == 3


def test_build_layer_applies_options_and_seeds_the_weights_without_touching_the_global_rng():
    state = torch.random.get_rng_state()
    options = {"out_channels": 6, "kernel_size": (2, 3), "stride": (2, 1), "padding": "valid", "groups": 3,
               "bias": False, "padding_mode": "circular", "dilation": (1, 2)}
    a = catalogue.build_layer("conv2d", options, channels=3, seed=5)
    b = catalogue.build_layer("conv2d", options, channels=3, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert (a.out_channels, a.kernel_size, a.stride, a.padding, a.groups, a.bias, a.padding_mode, a.dilation) == \
        (6, (2, 3), (2, 1), "valid", 3, None, "circular", (1, 2))
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    assert not torch.equal(a.weight, catalogue.build_layer("conv2d", options, channels=3, seed=6).weight)


def test_build_layer_batch_norm_in_eval_mode_gets_non_trivial_statistics():
    module = catalogue.build_layer("batchnorm2d", {"mode": "eval"}, channels=4, seed=1)
    assert not module.training
    assert not torch.equal(module.running_mean, torch.zeros(4))
    assert bool((module.running_var > 0).all()) and not torch.equal(module.weight, torch.ones(4))


@pytest.mark.parametrize("key, options, message", [
    ("conv2d", {"padding": "same", "stride": (2, 2)}, "padding='same' is not supported for strided convolutions"),
    ("conv2d", {"groups": 2}, "in_channels must be divisible by groups"),
    ("conv1d", {"out_channels": 4, "groups": 3}, "out_channels must be divisible by groups"),
    ("conv2d", {"padding_mode": "mirror"}, "padding_mode must be one of"),
    ("conv3d", {}, "unknown layer type 'conv3d'; choose one of conv2d"),
], ids=["same-with-stride", "groups-in-channels", "groups-1d", "padding-mode", "unknown-type"])
def test_build_layer_reports_pytorchs_reason(key, options, message):
    with pytest.raises(cv.LayerOptionsError, match=r"^(PyTorch refuses|unknown layer type)") as caught:
        catalogue.build_layer(key, options, channels=3)
    assert message in str(caught.value)


@pytest.mark.parametrize("key, options, shape, message", [
    ("conv2d", {"kernel_size": (9, 9)}, (2, 3, 5, 5), "Kernel size can't be greater than actual input size"),
    ("maxpool2d", {"padding": (3, 3)}, (1, 2, 7, 7), "pad should be at most half of effective kernel size"),
    ("convtranspose2d", {"output_padding": (2, 2)}, (1, 3, 4, 4), "output padding must be smaller than either"),
    ("batchnorm1d", {}, (1, 3), "Expected more than 1 value per channel when training"),
    ("linear", {}, (2, 3, 4), "shapes cannot be multiplied"),
], ids=["kernel-too-large", "pool-padding", "output-padding", "batchnorm-one-value", "linear-shape"])
def test_check_layer_reports_pytorchs_reason_for_an_input_it_refuses(key, options, shape, message):
    with pytest.raises(cv.LayerOptionsError, match="PyTorch refuses an input of shape") as caught:
        cv.check_layer(key, options, shape)
    assert message in str(caught.value)


def test_check_layer_reports_a_reference_implementation_that_refuses_a_large_input():
    with pytest.raises(cv.LayerOptionsError, match="REFERENCE_MAX_STEPS") as caught:
        cv.check_layer("conv2d", {"kernel_size": (5, 5), "padding": (2, 2)}, (1, 3, 64, 64), impl="reference")
    assert "impl='fast'" in str(caught.value)


CHECKS = {
    "conv2d-default": ("conv2d", {}, (2, 3, 7, 6), "fast"),
    "conv2d-stride2-reflect-groups": ("conv2d", {"out_channels": 6, "stride": (2, 2), "padding_mode": "reflect",
                                                 "groups": 3}, (2, 3, 7, 6), "fast"),
    "conv2d-depthwise-same-reference": ("conv2d", {"out_channels": 6, "groups": 3, "padding": "same",
                                                   "kernel_size": (2, 3)}, (1, 3, 5, 6), "reference"),
    "conv1d-valid-dilation": ("conv1d", {"padding": "valid", "dilation": 2}, (2, 3, 9), "fast"),
    "convtranspose2d": ("convtranspose2d", {}, (2, 3, 4, 5), "fast"),
    "convtranspose2d-reference": ("convtranspose2d", {"dilation": (2, 1), "groups": 3}, (1, 3, 3, 4), "reference"),
    "maxpool2d-ceil": ("maxpool2d", {"ceil_mode": True, "return_indices": True}, (2, 3, 8, 7), "fast"),
    "avgpool2d-divisor": ("avgpool2d", {"divisor_override": 3, "count_include_pad": False}, (1, 2, 6, 7), "fast"),
    "adaptivemaxpool2d": ("adaptivemaxpool2d", {}, (2, 2, 7, 5), "reference"),
    "relu-inplace": ("relu", {"inplace": True}, (2, 3, 4, 4), "fast"),
    "linear": ("linear", {"out_features": 2}, (4, 3), "fast"),
    "batchnorm1d-eval-no-length": ("batchnorm1d", {"mode": "eval"}, (1, 3), "fast"),
    "batchnorm2d-train": ("batchnorm2d", {}, (3, 2, 3, 3), "reference"),
    "flatten": ("flatten", {"start_dim": 2}, (2, 3, 4, 5), "fast"),
}


@pytest.mark.parametrize("key, options, shape, impl", CHECKS.values(), ids=CHECKS.keys())
def test_check_layer_agrees_with_autograd(key, options, shape, impl):
    result = cv.check_layer(key, options, shape, impl=impl, seed=2)
    assert result.passed, result.report.to_string()
    assert result.input_shape == shape
    assert set(result.report["impl"]) == {impl}
    assert set(result.manual) == set(result.autograd) == set(result.report["tensor"])
    for name, grad in result.manual.items():
        assert grad.shape == result.autograd[name].shape and grad.dtype == np.float64
        np.testing.assert_allclose(grad, result.autograd[name], rtol=0, atol=1e-10 * max(1.0, np.abs(grad).max()))
    assert np.abs(result.manual["input"]).max() > 0


def test_check_layer_with_an_empty_batch_skips_the_empty_input():
    result = cv.check_layer("conv2d", {}, (0, 3, 5, 5))
    assert result.manual["input"].shape == (0, 3, 5, 5)
    assert result.report.loc[result.report.tensor == "input", "status"].eq("skipped").all()
    assert result.passed


def test_run_check_leaves_the_module_as_it_was():
    module = catalogue.build_layer("batchnorm2d", {}, channels=3)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cv.run_check(module, catalogue.make_input((4, 3, 2, 2)))
    assert module.training and all(p.grad is None for p in module.parameters())
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


@pytest.mark.parametrize("key, sizes, shape", [
    ("conv2d", (2, 3, 7, 6), (2, 3, 7, 6)),
    ("conv1d", (2, 3, 7, 6), (2, 3, 6)),
    ("linear", (2, 3, 7, 6), (2, 3)),
    ("batchnorm1d", (2, 3, 7, 6), (2, 3, 6)),
    ("batchnorm1d", (2, 3, 7, 0), (2, 3)),
], ids=["NCHW", "NCL", "NF", "NCL-optional", "NC"])
def test_input_shape_follows_the_layout(key, sizes, shape):
    assert catalogue.input_shape(key, *sizes) == shape


@pytest.mark.parametrize("key", list(catalogue.LAYERS))
def test_formulas_cover_the_forward_and_every_gradient(key):
    module = catalogue.build_layer(key, {}, channels=3)
    entries = cv.formulas(key, module)
    assert entries[0][0].startswith("Forward")
    assert any("Input gradient" in what for what, _ in entries)
    params = [name for name in ("weight", "bias") if isinstance(getattr(module, name, None), torch.Tensor)]
    assert len(entries) == 2 + len(params)
    assert all(latex.count("{") == latex.count("}") for _, latex in entries)


def test_formulas_name_the_textbook_rules():
    conv = dict(cv.formulas("conv2d"))
    assert any(r"\operatorname{rot}_{180}(W)" in latex for latex in conv.values())
    assert r"\mathbb{1}[X > 0]" in cv.formulas("relu")[1][1]
    train = cv.formulas("batchnorm2d", catalogue.build_layer("batchnorm2d", {}, 3))
    evaluation = cv.formulas("batchnorm2d", catalogue.build_layer("batchnorm2d", {"mode": "eval"}, 3))
    assert "batch statistics" in train[0][0] and "running statistics" in evaluation[0][0]
    assert "D" in cv.formulas("avgpool2d")[1][1] and r"\arg\max" in cv.formulas("maxpool1d")[1][1]


@pytest.mark.parametrize("key, options, left_out", [
    ("conv2d", {"bias": False}, ["Bias gradient"]),
    ("linear", {"bias": False}, ["Bias gradient"]),
    ("batchnorm1d", {"affine": False}, ["Bias (beta) gradient", "Weight (gamma) gradient"]),
], ids=["conv-no-bias", "linear-no-bias", "batchnorm-not-affine"])
def test_formulas_leave_out_the_gradients_of_missing_parameters(key, options, left_out):
    whats = [what for what, _ in cv.formulas(key, catalogue.build_layer(key, options, 3))]
    assert not set(left_out) & set(whats)
    assert set(left_out) <= {what for what, _ in cv.formulas(key)}
    assert "Input gradient" in " ".join(whats)


@pytest.mark.parametrize("shape, first, second, plane", [
    ((2, 3, 4, 5), 1, 2, (4, 5)),
    ((2, 3, 7), 1, 0, (1, 7)),
    ((4, 6), 0, 0, (4, 6)),
    ((5,), 0, 0, (1, 5)),
], ids=["4d", "3d", "2d", "1d"])
def test_gradient_plane_selects_what_a_heatmap_draws(shape, first, second, plane):
    array = np.arange(np.prod(shape), dtype=float).reshape(shape)
    drawn = figures.gradient_plane(array, first, second)
    assert drawn.shape == plane
    if len(shape) >= 3:
        np.testing.assert_array_equal(drawn.ravel(), array[first, second].ravel())
    assert cv.selector_sizes(shape) == (shape[:2] if len(shape) >= 3 else None)


def test_gradient_figure_draws_manual_autograd_and_their_difference_on_symmetric_scales():
    manual_grad = np.array([[[[1.0, -2.0], [0.5, 0.0]]]])  # (1, 1, 2, 2)
    autograd_grad = manual_grad + np.array([[[[0.0, 1e-12], [0.0, -3e-12]]]])
    fig = figures.gradient_figure(manual_grad, autograd_grad, "∂L/∂X", "input")
    assert [trace.type for trace in fig.data] == ["heatmap"] * 3
    assert [a.text for a in fig.layout.annotations] == ["manual rule", "autograd", "manual − autograd"]
    assert fig.layout.title.text == "∂L/∂X"
    assert fig.layout.coloraxis.colorscale == fig.layout.coloraxis2.colorscale
    assert fig.layout.coloraxis.colorscale[0][1] == "rgb(5,48,97)"  # RdBu_r starts dark blue
    assert DIVERGING == "RdBu_r"
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-2.0, 2.0)
    assert fig.layout.coloraxis2.cmax == pytest.approx(3e-12)
    assert fig.layout.coloraxis2.cmin == -fig.layout.coloraxis2.cmax
    np.testing.assert_allclose(fig.data[2].z, manual_grad[0, 0] - autograd_grad[0, 0])
    assert fig.layout.xaxis.title.text == "column w" and fig.layout.yaxis.title.text == "row h"


def test_gradient_figure_of_an_exact_match_keeps_a_valid_colour_range():
    grad = np.ones((3, 4))
    fig = figures.gradient_figure(grad, grad, "∂L/∂W", "weight")
    assert fig.layout.coloraxis2.cmax == pytest.approx(1e-16) and not np.any(fig.data[2].z)
    assert fig.layout.annotations[2].text == "manual − autograd (identical)"
    assert fig.layout.xaxis.title.text == "input feature"


def test_check_examples_labels_every_row():
    report = cv.check_examples(["maxpool1d", "linear"], impl="reference", seed=1)
    assert list(report.columns[:2]) == ["layer", "config"]
    assert report.layer.unique().tolist() == ["maxpool1d", "linear"]
    assert (report.status == "pass").all(), report.to_string()


def test_single_thread_restores_the_thread_count():
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with catalogue.single_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == threads
