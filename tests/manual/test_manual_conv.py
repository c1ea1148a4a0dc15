"""Conv1d, Conv2d and ConvTranspose2d: manual gradients against autograd in float64 over configuration grids.

The grids are data: every configuration is one case with a readable id. A configuration PyTorch rejects is
not dropped: ``rejected_by_pytorch`` predicts it, and a separate test asserts that PyTorch does reject it.
"""

from __future__ import annotations

from itertools import product
from typing import Any

import pytest
import torch
from torch import nn

import diagnostics.manual as manual
from diagnostics.manual import conv

from .support import assert_close_rel, assert_grads_close, autograd_grads

IMPLS = ("fast", "reference")
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel:UserWarning")


def _name(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


# ---- Conv2d -----------------------------------------------------------------------------------------------

CONV2D_BASE = dict(
    in_channels=4, out_channels=6, kernel_size=3, stride=1, padding=0, dilation=1, groups=1, bias=True,
    padding_mode="zeros", input=(2, 7, 9),
)


def _conv2d_grid() -> list[dict[str, Any]]:
    variations = []
    # Stride x dilation x padding, zero padding; 'same'/'valid' and an asymmetric (rows, cols) padding.
    for stride, dilation, padding in product((1, 2, 3), (1, 2, 3), (0, 1, (2, 1), "same", "valid")):
        variations.append(dict(stride=stride, dilation=dilation, padding=padding))
    # Every non-zero padding mode with strides, paddings and dilations; an even kernel makes 'same' asymmetric.
    for mode, stride, padding in product(("reflect", "replicate", "circular"), (1, 2, 3), (1, (2, 1), "same")):
        variations.append(dict(padding_mode=mode, stride=stride, padding=padding, dilation=1 + stride % 2))
    for mode, dilation in product(("zeros", "reflect", "replicate", "circular"), (1, 3)):
        variations.append(dict(padding_mode=mode, padding="same", kernel_size=(4, 2), dilation=dilation))
    # Groups: two groups, depthwise, depthwise with a channel multiplier; with and without bias.
    for groups, stride, bias in product(("2", "depthwise", "depthwise_x2"), (1, 2), (True, False)):
        channels = {"2": (4, 6, 2), "depthwise": (4, 4, 4), "depthwise_x2": (4, 8, 4)}[groups]
        variations.append(
            dict(in_channels=channels[0], out_channels=channels[1], groups=channels[2], stride=stride, bias=bias,
                 padding=1)
        )
    # Batches of 0, 1 and 5; non-square and one-sized kernels; odd and non-square inputs.
    for batch, kernel in product((0, 1, 5), ((1, 1), (3, 3), (2, 3), (3, 1))):
        variations.append(dict(input=(batch, 5, 8), kernel_size=kernel, padding=(1, 0), stride=(2, 1)))
    for size in ((1, 1), (3, 11), (10, 3)):
        variations.append(dict(input=(2, *size), kernel_size=(1, 3) if size[0] < 3 else 3, padding=1))
    variations.append(dict(kernel_size=(5, 3), stride=(3, 2), padding=(2, 1), dilation=(1, 2), bias=False))
    return [CONV2D_BASE | v for v in variations]


def _conv2d_id(case: dict[str, Any]) -> str:
    return (
        f"k{_name(case['kernel_size'])}-s{_name(case['stride'])}-p{_name(case['padding'])}-"
        f"d{_name(case['dilation'])}-g{case['groups']}-{case['padding_mode']}-"
        f"c{case['in_channels']}to{case['out_channels']}-{'bias' if case['bias'] else 'nobias'}-"
        f"x{_name(case['input'])}"
    )


def conv_rejected_by_pytorch(case: dict[str, Any], dims: int) -> bool:
    """Whether PyTorch refuses this configuration (at construction or in the forward pass)."""
    kernel = (case["kernel_size"],) * dims if isinstance(case["kernel_size"], int) else case["kernel_size"]
    stride = (case["stride"],) * dims if isinstance(case["stride"], int) else case["stride"]
    dilation = (case["dilation"],) * dims if isinstance(case["dilation"], int) else case["dilation"]
    if case["padding"] == "same" and any(s > 1 for s in stride):
        return True
    pads = conv.conv_padding(kernel, dilation, case["padding"])
    sizes = case["input"][1:]
    for size, (before, after), k, d in zip(sizes, pads, kernel, dilation):
        if size + before + after < d * (k - 1) + 1:
            return True
        if case["padding_mode"] == "reflect" and max(before, after) >= size:
            return True
        if case["padding_mode"] == "circular" and max(before, after) > size:
            return True
    return False


def _build_conv(cls: type[nn.Module], case: dict[str, Any]) -> tuple[nn.Module, torch.Tensor]:
    kwargs = {k: v for k, v in case.items() if k not in ("input", "in_channels", "out_channels")}
    module = cls(case["in_channels"], case["out_channels"], **kwargs).double()
    batch, *spatial = case["input"]
    x = torch.randn(batch, case["in_channels"], *spatial, dtype=torch.float64)
    return module, x


CONV2D_GRID = _conv2d_grid()
CONV2D_CASES = [c for c in CONV2D_GRID if not conv_rejected_by_pytorch(c, 2)]
CONV2D_REJECTED = [c for c in CONV2D_GRID if conv_rejected_by_pytorch(c, 2)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CONV2D_CASES, ids=_conv2d_id)
def test_conv2d_matches_autograd(case: dict[str, Any], impl: str) -> None:
    module, x = _build_conv(nn.Conv2d, case)
    grad_output = torch.randn_like(module(x))
    grads = manual.backward(module, x, grad_output, impl=impl)
    assert_grads_close(grads, autograd_grads(module, x, grad_output))


@pytest.mark.parametrize("case", CONV2D_REJECTED, ids=_conv2d_id)
def test_conv2d_configuration_rejected_by_pytorch(case: dict[str, Any]) -> None:
    with pytest.raises((ValueError, RuntimeError)):
        module, x = _build_conv(nn.Conv2d, case)
        module(x)


def test_conv2d_grid_covers_rejected_and_accepted_configurations() -> None:
    assert len(CONV2D_CASES) >= 90
    assert len(CONV2D_REJECTED) > 5


# ---- Conv1d -----------------------------------------------------------------------------------------------

CONV1D_BASE = dict(
    in_channels=4, out_channels=6, kernel_size=3, stride=1, padding=0, dilation=1, groups=1, bias=True,
    padding_mode="zeros", input=(2, 11),
)


def _conv1d_grid() -> list[dict[str, Any]]:
    variations = []
    for stride, dilation, padding in product((1, 2, 3), (1, 2, 3), (0, 2, "same", "valid")):
        variations.append(dict(stride=stride, dilation=dilation, padding=padding))
    for mode, stride in product(("reflect", "replicate", "circular"), (1, 3)):
        variations.append(dict(padding_mode=mode, stride=stride, padding=2, dilation=2))
    variations.append(dict(padding_mode="reflect", padding="same", kernel_size=4))
    variations.append(dict(in_channels=4, out_channels=8, groups=4, bias=False, padding=1))
    variations.append(dict(in_channels=4, out_channels=6, groups=2, stride=2))
    for batch in (0, 1):
        variations.append(dict(input=(batch, 6), kernel_size=2))
    variations.append(dict(input=(2, 2), padding_mode="reflect", padding=2))
    return [CONV1D_BASE | v for v in variations]


def _conv1d_id(case: dict[str, Any]) -> str:
    return (
        f"k{case['kernel_size']}-s{case['stride']}-p{case['padding']}-d{case['dilation']}-g{case['groups']}-"
        f"{case['padding_mode']}-{'bias' if case['bias'] else 'nobias'}-x{_name(case['input'])}"
    )


CONV1D_GRID = _conv1d_grid()
CONV1D_CASES = [c for c in CONV1D_GRID if not conv_rejected_by_pytorch(c, 1)]
CONV1D_REJECTED = [c for c in CONV1D_GRID if conv_rejected_by_pytorch(c, 1)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CONV1D_CASES, ids=_conv1d_id)
def test_conv1d_matches_autograd(case: dict[str, Any], impl: str) -> None:
    module, x = _build_conv(nn.Conv1d, case)
    grad_output = torch.randn_like(module(x))
    grads = manual.backward(module, x, grad_output, impl=impl)
    assert_grads_close(grads, autograd_grads(module, x, grad_output))


@pytest.mark.parametrize("case", CONV1D_REJECTED, ids=_conv1d_id)
def test_conv1d_configuration_rejected_by_pytorch(case: dict[str, Any]) -> None:
    with pytest.raises((ValueError, RuntimeError)):
        module, x = _build_conv(nn.Conv1d, case)
        module(x)


# ---- ConvTranspose2d --------------------------------------------------------------------------------------

CONV_T_BASE = dict(
    in_channels=4, out_channels=6, kernel_size=3, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
    bias=True, input=(2, 4, 5),
)


def _conv_transpose2d_grid() -> list[dict[str, Any]]:
    variations = []
    for stride, dilation, padding, output_padding in product((1, 2, 3), (1, 2, 3), (0, 1, (2, 1)), (0, 1, 2)):
        variations.append(dict(stride=stride, dilation=dilation, padding=padding, output_padding=output_padding))
    for groups, bias in product((2, "depthwise"), (True, False)):
        channels = (4, 6, 2) if groups == 2 else (4, 8, 4)
        variations.append(
            dict(in_channels=channels[0], out_channels=channels[1], groups=channels[2], bias=bias, stride=2,
                 output_padding=1)
        )
    for batch in (0, 1):
        variations.append(dict(input=(batch, 3, 6), kernel_size=(2, 3), stride=(2, 1), padding=(0, 1)))
    variations.append(dict(kernel_size=(1, 4), stride=(3, 2), output_padding=(2, 1), dilation=(1, 2)))
    return [CONV_T_BASE | v for v in variations]


def _conv_transpose2d_id(case: dict[str, Any]) -> str:
    return (
        f"k{_name(case['kernel_size'])}-s{_name(case['stride'])}-p{_name(case['padding'])}-"
        f"op{_name(case['output_padding'])}-d{_name(case['dilation'])}-g{case['groups']}-"
        f"{'bias' if case['bias'] else 'nobias'}-x{_name(case['input'])}"
    )


def conv_transpose_rejected_by_pytorch(case: dict[str, Any]) -> bool:
    """Output padding must be smaller than the stride or the dilation; the output must not be empty."""
    kernel, stride = _pair(case["kernel_size"]), _pair(case["stride"])
    padding, output_padding, dilation = _pair(case["padding"]), _pair(case["output_padding"]), _pair(case["dilation"])
    for size, k, s, p, op, d in zip(case["input"][1:], kernel, stride, padding, output_padding, dilation):
        if op >= max(s, d):
            return True
        if (size - 1) * s - 2 * p + d * (k - 1) + op + 1 <= 0:
            return True
    return False


CONV_T_GRID = _conv_transpose2d_grid()
CONV_T_CASES = [c for c in CONV_T_GRID if not conv_transpose_rejected_by_pytorch(c)]
CONV_T_REJECTED = [c for c in CONV_T_GRID if conv_transpose_rejected_by_pytorch(c)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CONV_T_CASES, ids=_conv_transpose2d_id)
def test_conv_transpose2d_matches_autograd(case: dict[str, Any], impl: str) -> None:
    module, x = _build_conv(nn.ConvTranspose2d, case)
    grad_output = torch.randn_like(module(x))
    grads = manual.backward(module, x, grad_output, impl=impl)
    assert_grads_close(grads, autograd_grads(module, x, grad_output))


@pytest.mark.parametrize("case", CONV_T_REJECTED, ids=_conv_transpose2d_id)
def test_conv_transpose2d_configuration_rejected_by_pytorch(case: dict[str, Any]) -> None:
    with pytest.raises((ValueError, RuntimeError)):
        module, x = _build_conv(nn.ConvTranspose2d, case)
        module(x)


def test_conv_transpose2d_backward_is_a_plain_convolution() -> None:
    module = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    grad_output = torch.randn_like(module(x))
    conv_of_grad = torch.nn.functional.conv2d(grad_output, module.weight, None, 2, 1, 1, 2)
    grads = manual.backward(module, x, grad_output)
    assert_close_rel(grads["input"], conv_of_grad[:, :, :5, :5])


# ---- Formulas and helpers ---------------------------------------------------------------------------------


def test_conv2d_grad_bias_sums_over_batch_and_positions() -> None:
    grad_output = torch.arange(24, dtype=torch.float64).view(2, 3, 2, 2)
    # channel k: (4k + 0..3) from the first sample plus (12 + 4k + 0..3) from the second
    expected = torch.tensor([6.0 + 54.0, 22.0 + 70.0, 38.0 + 86.0], dtype=torch.float64)
    torch.testing.assert_close(conv.conv2d_grad_bias(grad_output), expected)
    torch.testing.assert_close(conv.conv2d_grad_bias_reference(grad_output), expected)


def test_one_by_one_convolution_weight_gradient_is_an_outer_product() -> None:
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    grad_output = torch.tensor([[[[10.0, 100.0]]]], dtype=torch.float64)  # (1, 1, 1, 2)
    expected = torch.tensor([[[[1 * 10 + 2 * 100.0]], [[3 * 10 + 4 * 100.0]]]], dtype=torch.float64)
    torch.testing.assert_close(conv.conv2d_grad_weight(x, (1, 2, 1, 1), grad_output), expected)
    torch.testing.assert_close(conv.conv2d_grad_weight_reference(x, (1, 2, 1, 1), grad_output), expected)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_unpad_grad_is_the_adjoint_of_padding(mode: str) -> None:
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    grad_padded = torch.randn(2, 3, 4 + 3, 5 + 3, dtype=torch.float64)
    pads = ((1, 2), (2, 1))
    # <pad(x), g> = <x, unpad_grad(g)> for every x and g.
    lhs = (conv.pad_input(x, pads, mode) * grad_padded).sum()
    for unpad in (conv.unpad_grad, conv.unpad_grad_reference):
        torch.testing.assert_close((x * unpad(grad_padded, pads, mode)).sum(), lhs)


@pytest.mark.parametrize(
    "padding, expected", [("valid", ((0, 0), (0, 0))), ("same", ((1, 2), (1, 1))), (2, ((2, 2), (2, 2)))],
    ids=["valid", "same-even-kernel", "int"],
)
def test_conv_padding_matches_pytorch(padding: Any, expected: tuple) -> None:
    assert conv.conv_padding((4, 3), (1, 1), padding) == expected


def test_conv2d_unbatched_input() -> None:
    module = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    grad_output = torch.randn(4, 5, 6, dtype=torch.float64)
    for impl in IMPLS:
        assert_grads_close(manual.backward(module, x, grad_output, impl=impl), autograd_grads(module, x, grad_output))


def test_conv2d_float32_gradients_are_float32_and_close() -> None:
    module = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 9, 9)
    grad_output = torch.randn_like(module(x))
    grads = manual.backward(module, x, grad_output)
    expected = autograd_grads(module, x, grad_output)
    assert {g.dtype for g in grads.values()} == {torch.float32}
    assert_grads_close(grads, expected, rtol=1e-5)
