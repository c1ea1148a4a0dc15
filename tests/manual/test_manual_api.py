"""The public API of diagnostics.manual: registry, dispatch, errors, and rules that never call autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import diagnostics.manual as manual
from diagnostics.manual import registry

from .support import assert_same_snapshot, module_snapshot

SUPPORTED = [
    "Conv1d", "Conv2d", "ConvTranspose2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "ReLU", "Tanh", "Sigmoid", "Linear", "BatchNorm1d", "BatchNorm2d",
    "Flatten", "Identity",
]

# One instance of every supported type with an input that fits it.
EXAMPLES = {
    "Conv1d": (lambda: nn.Conv1d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 2, 6)),
    "Conv2d": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding="valid", groups=1), (2, 2, 6, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 4, 3, stride=2, output_padding=1, groups=2), (2, 2, 3, 4)),
    "MaxPool1d": (lambda: nn.MaxPool1d(2), (2, 2, 6)),
    "MaxPool2d": (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 2, 6, 5)),
    "AvgPool1d": (lambda: nn.AvgPool1d(3, 2, 1), (2, 2, 6)),
    "AvgPool2d": (lambda: nn.AvgPool2d(2, divisor_override=3), (2, 2, 6, 6)),
    "AdaptiveAvgPool1d": (lambda: nn.AdaptiveAvgPool1d(4), (2, 2, 6)),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 2, 6, 5)),
    "AdaptiveMaxPool2d": (lambda: nn.AdaptiveMaxPool2d((2, 3)), (2, 2, 6, 5)),
    "ReLU": (lambda: nn.ReLU(inplace=True), (2, 5)),
    "Tanh": (lambda: nn.Tanh(), (2, 5)),
    "Sigmoid": (lambda: nn.Sigmoid(), (2, 5)),
    "Linear": (lambda: nn.Linear(5, 3), (2, 5)),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(2), (4, 2, 3)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(2), (2, 2, 3, 3)),
    "Flatten": (lambda: nn.Flatten(), (2, 2, 3)),
    "Identity": (lambda: nn.Identity(), (2, 5)),
}


def test_supported_module_types_are_exactly_the_listed_ones() -> None:
    assert [t.__name__ for t in manual.supported_module_types()] == SUPPORTED
    assert sorted(EXAMPLES) == sorted(SUPPORTED)


def test_unsupported_module_names_the_type_and_the_supported_ones() -> None:
    with pytest.raises(manual.UnsupportedModuleError, match="Dropout.*supported module types: Conv1d, Conv2d") as info:
        manual.backward(nn.Dropout(), torch.randn(2, 3), torch.randn(2, 3))
    assert isinstance(info.value, manual.ManualGradError)
    assert isinstance(info.value, ValueError)


def test_subclass_of_a_supported_type_is_not_treated_as_it() -> None:
    class ScaledConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    with pytest.raises(manual.UnsupportedModuleError, match="ScaledConv.*subclass of Conv2d"):
        manual.backward(ScaledConv(1, 1, 1), torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2))


def test_register_refuses_to_replace_a_rule() -> None:
    with pytest.raises(manual.ManualGradError, match="Conv2d already has a manual rule"):
        manual.register(nn.Conv2d, registry.rule_for(nn.Linear(1, 1)))
    assert registry.rule_for(nn.Conv2d(1, 1, 1)).name == "Conv2d"


@pytest.mark.parametrize(
    "module, x_shape, grad_shape, message",
    [
        (nn.Conv2d(3, 4, 3), (2, 5, 6, 6), (2, 4, 4, 4), "in_channels=3 .* has 5"),
        (nn.Conv2d(3, 4, 3), (3, 6), (4, 4), "expects an input with 3 or 4 dimensions"),
        (nn.Conv2d(3, 4, 5), (1, 3, 3, 3), (1, 4, 1, 1), "cannot take an input of shape"),
        (nn.Conv2d(3, 4, 3, padding=3, padding_mode="reflect"), (1, 3, 3, 3), (1, 4, 7, 7), "cannot take an input"),
        (nn.Conv2d(3, 4, 3), (2, 3, 6, 6), (2, 4, 5, 5), r"grad_output has shape \(2, 4, 5, 5\).*\(2, 4, 4, 4\)"),
        (nn.Linear(3, 4), (2, 5), (2, 4), "in_features=3"),
        (nn.MaxPool2d(2), (1, 1, 4, 4), (1, 1, 3, 3), "grad_output has shape"),
        (nn.MaxPool2d(5), (1, 1, 4, 4), (1, 1, 1, 1), "cannot take an input"),
        (nn.BatchNorm2d(3), (2, 3, 4), (2, 3, 4), "expects an input with 4 dimensions"),
        (nn.BatchNorm1d(3), (2, 4), (2, 4), "cannot take an input of shape"),
        (nn.ConvTranspose2d(2, 3, 3), (1, 3, 4, 4), (1, 3, 6, 6), "in_channels=2"),
        (nn.Flatten(), (2, 3, 4), (2, 3, 4), "grad_output has shape"),
    ],
    ids=[
        "conv-channels", "conv-ndim", "conv-kernel-too-large", "conv-reflect-padding-too-large", "conv-grad-shape",
        "linear-features", "maxpool-grad-shape", "maxpool-kernel-too-large", "bn2d-ndim", "bn1d-channels",
        "convtranspose-channels", "flatten-grad-shape",
    ],
)
def test_wrong_shapes_raise_manual_grad_error(module, x_shape, grad_shape, message) -> None:
    with pytest.raises(manual.ManualGradError, match=message):
        manual.backward(module, torch.randn(x_shape), torch.randn(grad_shape))


def test_dtype_mismatch_names_both_dtypes() -> None:
    with pytest.raises(manual.ManualGradError, match="float64 but Conv2d.weight is torch.float32"):
        manual.backward(nn.Conv2d(1, 1, 1), torch.randn(1, 1, 2, 2).double(), torch.randn(1, 1, 2, 2).double())
    with pytest.raises(manual.ManualGradError, match="grad_output is torch.float64"):
        manual.backward(nn.ReLU(), torch.randn(2), torch.randn(2).double())
    with pytest.raises(manual.ManualGradError, match="floating-point tensor, got a torch.int64 tensor"):
        manual.backward(nn.ReLU(), torch.arange(3), torch.randn(3))


def test_unknown_impl_is_named() -> None:
    with pytest.raises(manual.ManualGradError, match="impl='loops'"):
        manual.backward(nn.ReLU(), torch.randn(2), torch.randn(2), impl="loops")


def test_reference_refuses_inputs_too_large_for_its_loops() -> None:
    module = nn.Conv2d(1, 1, 3, padding=1)
    x = torch.randn(1, 1, 100, 100)
    with pytest.raises(manual.ManualGradError, match="REFERENCE_MAX_STEPS=50000; use impl='fast'"):
        manual.backward(module, x, torch.randn(1, 1, 100, 100), impl="reference")


def test_conv_transpose2d_refuses_output_size_under_manual_backward() -> None:
    module = nn.ConvTranspose2d(2, 2, 3, stride=2)
    with manual.use_manual_backward(module):
        with pytest.raises(manual.ManualGradError, match="forward\\(input\\) only"):
            module(torch.randn(1, 2, 3, 3), output_size=(8, 8))


class _OpRecorder(TorchDispatchMode):
    """Records the name of every aten operator that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.name())
        return func(*args, **(kwargs or {}))


def _forbid_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("a manual rule called autograd or torch.nn.grad")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    for name in ("conv1d_input", "conv1d_weight", "conv2d_input", "conv2d_weight"):
        monkeypatch.setattr(torch.nn.grad, name, forbidden)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("name", SUPPORTED)
def test_rules_never_call_autograd_or_backward_operators(name: str, impl: str, monkeypatch) -> None:
    make, shape = EXAMPLES[name]
    module = make().double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    grad_output = torch.randn_like(module(x.detach().clone()))
    _forbid_autograd(monkeypatch)
    with _OpRecorder() as recorder:
        grads = manual.backward(module, x, grad_output, impl=impl)
    assert not [op for op in recorder.ops if "backward" in op]
    assert not [g for g in grads.values() if g is not None and g.requires_grad]


@pytest.mark.parametrize("name", SUPPORTED)
def test_backward_changes_nothing_in_the_module(name: str) -> None:
    make, shape = EXAMPLES[name]
    module = make()
    x = torch.randn(shape)
    grad_output = torch.randn_like(module(x.clone()))
    before = module_snapshot(module)
    manual.backward(module, x, grad_output)
    assert_same_snapshot(before, module_snapshot(module))


def test_backward_returns_none_for_missing_parameters() -> None:
    grads = manual.backward(nn.Conv2d(1, 2, 1, bias=False), torch.randn(1, 1, 2, 2), torch.randn(1, 2, 2, 2))
    assert grads["bias"] is None
    assert grads["weight"].shape == (2, 1, 1, 1)
    assert manual.backward(nn.Tanh(), torch.randn(3), torch.randn(3))["weight"] is None


def test_op_recorder_sees_autograd_backward_operators() -> None:
    # The control for the test above: autograd's backward of a convolution is visible to the recorder.
    module = nn.Conv2d(1, 1, 3).double()
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    output = module(x)
    with _OpRecorder() as recorder:
        torch.autograd.grad(output, x, torch.ones_like(output))
    assert "aten::convolution_backward" in recorder.ops
