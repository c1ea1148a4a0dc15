"""manual.check and manual.check_model: rows per tensor and reference, ties, failures, state left untouched."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

import diagnostics.manual as manual
from diagnostics.manual import checks
from diagnostics.manual import registry
from diagnostics.manual.rule import Rule

from .support import assert_same_snapshot, module_snapshot

CHECK_COLUMNS = ["module", "tensor", "reference", "impl", "max_abs_err", "max_rel_err", "status", "reason"]

SMALL_LAYERS = {
    "conv1d-circular": (lambda: nn.Conv1d(2, 3, 3, padding=2, padding_mode="circular"), (2, 2, 5)),
    "conv2d-strided-dilated": (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2, groups=2), (2, 2, 6, 7)),
    "conv-transpose2d": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1), (2, 2, 3, 3)),
    "maxpool1d": (lambda: nn.MaxPool1d(3, 2, 1), (2, 2, 7)),
    "maxpool2d": (lambda: nn.MaxPool2d(3, 2, 1, dilation=1, ceil_mode=True), (2, 2, 6, 5)),
    "avgpool1d": (lambda: nn.AvgPool1d(3, 2, 1, count_include_pad=False), (2, 2, 7)),
    "avgpool2d": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=4), (2, 2, 6, 5)),
    "adaptive-avgpool1d": (lambda: nn.AdaptiveAvgPool1d(3), (2, 2, 7)),
    "adaptive-avgpool2d": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 2, 5, 7)),
    "adaptive-maxpool2d": (lambda: nn.AdaptiveMaxPool2d((2, 3)), (2, 2, 5, 7)),
    "relu": (lambda: nn.ReLU(), (3, 4)),
    "tanh": (lambda: nn.Tanh(), (3, 4)),
    "sigmoid": (lambda: nn.Sigmoid(), (3, 4)),
    "linear": (lambda: nn.Linear(4, 3), (3, 4)),
    "batchnorm1d-train": (lambda: nn.BatchNorm1d(3), (4, 3, 2)),
    "batchnorm2d-eval": (lambda: nn.BatchNorm2d(3).eval(), (2, 3, 3, 3)),
    "flatten": (lambda: nn.Flatten(), (2, 3, 2)),
    "identity": (lambda: nn.Identity(), (2, 3)),
}


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("make, shape", SMALL_LAYERS.values(), ids=SMALL_LAYERS.keys())
def test_check_passes_against_autograd_and_finite_differences(make, shape, impl: str) -> None:
    module = make()
    report = manual.check(module, torch.randn(shape), impl=impl, max_coords=12)
    assert list(report.columns) == CHECK_COLUMNS
    tensors = ["input"] + [name for name in ("weight", "bias") if getattr(module, name, None) is not None]
    assert list(zip(report.tensor, report.reference)) == [(t, r) for r in ("autograd", "finite_diff") for t in tensors]
    assert (report.status == "pass").all(), report.to_string()
    assert (report.impl == impl).all()
    assert (report[report.reference == "autograd"].max_rel_err <= 1e-10).all()


def test_check_reports_max_pool_ties_as_non_differentiable_for_finite_differences() -> None:
    x = torch.randint(0, 2, (2, 3, 6, 6)).float()  # many windows attain their maximum twice
    report = manual.check(nn.MaxPool2d(2), x, max_coords=32).set_index("reference")
    assert report.loc["autograd", "status"] == "pass"  # same element as autograd, ties included
    assert report.loc["finite_diff", "status"] == "non_differentiable"
    assert "max-pool ties" in report.loc["finite_diff", "reason"]


def test_check_reports_adaptive_max_pool_ties_as_non_differentiable() -> None:
    x = torch.zeros(1, 2, 4, 4)
    report = manual.check(nn.AdaptiveMaxPool2d(2), x).set_index("reference")
    assert report.loc["autograd", "status"] == "pass"
    assert report.loc["finite_diff", "status"] == "non_differentiable"


def test_check_reports_relu_at_zero_as_non_differentiable_for_finite_differences() -> None:
    x = torch.tensor([[0.0, 1.0, -1.0, 3e-7]])
    report = manual.check(nn.ReLU(inplace=True), x).set_index("reference")
    assert report.loc["autograd", "status"] == "pass"
    assert report.loc["finite_diff", "status"] == "non_differentiable"
    assert "ReLU's kink at zero" in report.loc["finite_diff", "reason"]


class _Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_check_reports_a_wrong_rule_as_fail(monkeypatch) -> None:
    wrong = Rule(
        name="Doubler",
        forward=lambda module, x, state: 2 * x,
        fast=lambda module, x, state, grad_output: {"input": 3 * grad_output},
        reference=lambda module, x, state, grad_output: {"input": 3 * grad_output},
    )
    monkeypatch.setitem(registry._RULES, _Doubler, wrong)
    report = manual.check(_Doubler(), torch.randn(3, 4))
    assert (report.status == "fail").all()
    assert report.max_rel_err.tolist() == pytest.approx([0.5, 0.5], rel=1e-6)
    assert report.reason.str.contains("> 1e-10").iloc[0]


def test_check_leaves_a_float32_module_untouched() -> None:
    module = nn.Sequential(nn.BatchNorm2d(3))[0]  # train mode, running stats tracked
    module(torch.randn(4, 3, 2, 2)).sum().backward()  # some .grad and non-trivial running stats
    before = module_snapshot(module)
    report = manual.check(module, torch.randn(4, 3, 2, 2), max_coords=8)
    assert (report.status == "pass").all(), report.to_string()
    assert_same_snapshot(before, module_snapshot(module))
    assert module.weight.dtype == torch.float32


def test_check_samples_finite_difference_coordinates_with_a_seed() -> None:
    module = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 5, 5)
    first = manual.check(module, x, references=["finite_diff"], max_coords=5, seed=3)
    again = manual.check(module, x, references=["finite_diff"], max_coords=5, seed=3)
    other = manual.check(module, x, references=["finite_diff"], max_coords=5, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first.max_abs_err.equals(other.max_abs_err)
    assert (first.status == "pass").all()


def test_check_uses_the_given_grad_output() -> None:
    module = nn.Linear(3, 2)
    report = manual.check(module, torch.randn(4, 3), torch.zeros(4, 2), references="autograd")
    assert report.max_abs_err.tolist() == [0.0, 0.0, 0.0]


def test_check_skips_empty_tensors() -> None:
    report = manual.check(nn.Conv2d(2, 3, 3), torch.randn(0, 2, 5, 5)).set_index(["tensor", "reference"])
    assert report.loc[("input", "autograd"), "status"] == "skipped"
    assert "no elements" in report.loc[("input", "finite_diff"), "reason"]
    assert report.loc[("weight", "autograd"), "status"] == "pass"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(references=["autograd", "numerical"]), "references=.*subset"),
        (dict(references=[]), "references=.*subset"),
        (dict(impl="slow"), "impl='slow'"),
        (dict(max_coords=0), "max_coords=0"),
        (dict(step=0.0), "step=0.0"),
    ],
    ids=["unknown-reference", "no-reference", "unknown-impl", "no-coords", "zero-step"],
)
def test_check_names_a_bad_setting(kwargs, message) -> None:
    with pytest.raises(manual.ManualGradError, match=message):
        manual.check(nn.ReLU(), torch.randn(3), **kwargs)


def test_check_rejects_a_wrong_grad_output_shape() -> None:
    with pytest.raises(manual.ManualGradError, match="grad_output has shape"):
        manual.check(nn.Linear(3, 2), torch.randn(4, 3), torch.zeros(4, 3))


def test_max_rel_err_by_hand() -> None:
    actual, expected = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])
    assert manual.max_abs_err(actual, expected) == 2.0
    assert manual.max_rel_err(actual, expected) == 0.5  # 2 / max(|1|, |4|)
    assert manual.max_rel_err(torch.zeros(2), torch.zeros(2)) == 0.0
    assert manual.max_rel_err(actual, expected, floor=8.0) == 0.25  # 2 / max(4, 8)
    assert math.isnan(manual.max_rel_err(torch.zeros(0), torch.zeros(0)))


# ---- check_model ----------------------------------------------------------------------------------------


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.Tanh(),
        nn.Dropout(0.0),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def test_check_model_checks_every_supported_layer_with_its_real_inputs() -> None:
    model = _cnn()
    report = manual.check_model(model, torch.randn(2, 3, 8, 8))
    assert list(report.columns) == ["layer", "call", *CHECK_COLUMNS]
    checked = report[report.status != "skipped"]
    assert (checked.status == "pass").all(), report.to_string()
    assert checked.layer.unique().tolist() == ["0", "1", "2", "3", "4", "5", "7", "8", "9"]
    assert checked.groupby("layer").size().to_dict() == {
        "0": 3, "1": 3, "2": 1, "3": 1, "4": 2, "5": 1, "7": 1, "8": 1, "9": 3,
    }
    skipped = report[report.status == "skipped"]
    assert skipped.layer.tolist() == ["6"]
    assert "no manual backward rule for Dropout" in skipped.reason.iloc[0]


def test_check_model_leaves_the_model_as_it_was() -> None:
    model = _cnn()
    model(torch.randn(2, 3, 8, 8)).sum().backward()  # non-trivial running stats and .grad
    before = module_snapshot(model)
    manual.check_model(model, torch.randn(2, 3, 8, 8), references=["autograd", "finite_diff"], max_coords=2)
    assert_same_snapshot(before, module_snapshot(model))


def test_check_model_restores_the_model_when_the_forward_pass_raises() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(5, 2))  # the linear layer gets 3 features
    before = module_snapshot(model)
    with pytest.raises(RuntimeError):
        manual.check_model(model, torch.randn(4, 3))
    assert_same_snapshot(before, module_snapshot(model))


def test_check_model_checks_each_call_of_a_shared_layer() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Sigmoid())
    report = manual.check_model(model, torch.randn(3, 4))
    linear_rows = report[report.layer == "0"]
    assert linear_rows.call.tolist() == [0, 0, 0, 1, 1, 1]
    assert (report.status == "pass").all(), report.to_string()


def test_check_model_with_a_loss_function_and_eval_mode() -> None:
    model = _cnn().eval()
    target = torch.tensor([0, 1])
    report = manual.check_model(
        model, torch.randn(2, 3, 8, 8), loss_fn=lambda out: nn.functional.cross_entropy(out, target)
    )
    assert (report[report.status != "skipped"].status == "pass").all(), report.to_string()


def test_check_model_lists_layers_that_did_not_run() -> None:
    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(3, 3)
            self.unused = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    report = manual.check_model(Partial(), torch.randn(2, 3))
    unused = report[report.layer == "unused"]
    assert unused.status.tolist() == ["skipped"]
    assert unused.reason.iloc[0] == "the layer did not run in the forward pass"
    assert (report[report.layer == "used"].status == "pass").all()


def test_check_model_reference_impl_and_finite_differences() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 2))
    report = manual.check_model(
        model, torch.randn(2, 2, 6, 6), impl="reference", references=["autograd", "finite_diff"], max_coords=4
    )
    assert (report.status == "pass").all(), report.to_string()
    assert set(report.reference) == {"autograd", "finite_diff"}


def test_float64_copy_drops_a_routed_forward() -> None:
    module = nn.Conv2d(1, 1, 1)
    with manual.use_manual_backward(module):
        clone = checks._float64_copy(module)
        assert "forward" not in vars(clone)
        assert "forward" in vars(module)


def test_check_model_passes_a_bias_whose_gradient_is_zero_up_to_rounding() -> None:
    # Batch norm removes any constant shift: the convolution's bias gradient is only rounding noise.
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Tanh())
    report = manual.check_model(model, torch.randn(4, 2, 6, 6), references=["autograd", "finite_diff"], max_coords=6)
    bias = report[(report.layer == "0") & (report.tensor == "bias")]
    assert (bias.max_abs_err < 1e-6).all()
    assert (report.status == "pass").all(), report.to_string()
