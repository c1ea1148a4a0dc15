"""Max, average and adaptive pooling: manual gradients against autograd in float64, ties included.

Grids are data with readable ids; configurations PyTorch rejects are asserted to be rejected, not dropped.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import pytest
import torch
from torch import nn

import diagnostics.manual as manual
from diagnostics.manual import pool

from .support import assert_close_rel, assert_grads_close, autograd_grads

IMPLS = ("fast", "reference")


def _name(value: Any) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _output_length(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's pooling_output_shape."""
    numerator = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = math.floor(numerator / s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool_rejected_by_pytorch(case: dict[str, Any], dims: int) -> bool:
    """Padding above half the kernel, or an empty output, is refused by PyTorch."""
    kernel = _pair(case["kernel_size"]) if dims == 2 else (case["kernel_size"],)
    stride = case.get("stride") or case["kernel_size"]
    stride = _pair(stride) if dims == 2 else (stride,)
    padding = _pair(case["padding"]) if dims == 2 else (case["padding"],)
    dilation = _pair(case.get("dilation", 1)) if dims == 2 else (case.get("dilation", 1),)
    for size, k, s, p, d in zip(case["input"][2:], kernel, stride, padding, dilation):
        if p * 2 > k:
            return True
        if _output_length(size, k, s, p, d, case["ceil_mode"]) < 1:
            return True
    return False


def _build(cls: type[nn.Module], case: dict[str, Any], integer_valued: bool = False) -> tuple[nn.Module, torch.Tensor]:
    module = cls(**{k: v for k, v in case.items() if k != "input"})
    if integer_valued:  # many ties: windows whose maximum is attained more than once
        x = torch.randint(0, 3, case["input"]).to(torch.float64)
    else:
        x = torch.randn(case["input"], dtype=torch.float64)
    return module, x


def _check_against_autograd(module: nn.Module, x: torch.Tensor, impl: str) -> None:
    output = module(x)
    grad_output = torch.randn_like(output[0] if isinstance(output, tuple) else output)
    assert_grads_close(manual.backward(module, x, grad_output, impl=impl), autograd_grads(module, x, grad_output))


# ---- MaxPool2d / MaxPool1d ------------------------------------------------------------------------------


def _max_pool2d_grid() -> list[dict[str, Any]]:
    cases = []
    for kernel, stride, padding, dilation, ceil_mode in product(
        (2, 3, (3, 2)), (None, 1, 2, 3), (0, 1), (1, 2), (False, True)
    ):
        cases.append(
            dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode,
                 input=(2, 3, 7, 8))
        )
    cases.append(dict(kernel_size=2, stride=2, padding=1, dilation=1, ceil_mode=True, input=(1, 2, 1, 1)))
    cases.append(dict(kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False, input=(0, 2, 5, 5)))
    cases.append(dict(kernel_size=3, stride=2, padding=0, dilation=3, ceil_mode=False, input=(1, 2, 5, 5)))
    cases.append(dict(kernel_size=3, stride=1, padding=2, dilation=1, ceil_mode=False, input=(1, 2, 5, 5)))
    cases.append(dict(kernel_size=3, stride=1, padding=0, dilation=1, ceil_mode=True, input=(1, 2, 2, 2)))
    cases.append(dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1), dilation=1, ceil_mode=True,
                      input=(2, 2, 3, 10), return_indices=True))
    return cases


def _max_pool2d_id(case: dict[str, Any]) -> str:
    return (
        f"k{_name(case['kernel_size'])}-s{_name(case['stride'])}-p{_name(case['padding'])}-"
        f"d{case['dilation']}-{'ceil' if case['ceil_mode'] else 'floor'}-x{_name(case['input'])}"
        + ("-indices" if case.get("return_indices") else "")
    )


MAX_POOL2D_GRID = _max_pool2d_grid()
MAX_POOL2D_CASES = [c for c in MAX_POOL2D_GRID if not pool_rejected_by_pytorch(c, 2)]
MAX_POOL2D_REJECTED = [c for c in MAX_POOL2D_GRID if pool_rejected_by_pytorch(c, 2)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", MAX_POOL2D_CASES, ids=_max_pool2d_id)
def test_max_pool2d_matches_autograd(case: dict[str, Any], impl: str) -> None:
    _check_against_autograd(*_build(nn.MaxPool2d, case), impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", MAX_POOL2D_CASES[::3], ids=_max_pool2d_id)
def test_max_pool2d_ties_go_where_pytorch_puts_them(case: dict[str, Any], impl: str) -> None:
    _check_against_autograd(*_build(nn.MaxPool2d, case, integer_valued=True), impl)


@pytest.mark.parametrize("case", MAX_POOL2D_REJECTED, ids=_max_pool2d_id)
def test_max_pool2d_configuration_rejected_by_pytorch(case: dict[str, Any]) -> None:
    with pytest.raises(RuntimeError):
        module, x = _build(nn.MaxPool2d, case)
        module(x)


def test_max_pool2d_ties_with_many_channels_use_the_same_element_as_autograd() -> None:
    # Many channels is where a kernel might vectorise over channels; ties must still go to the first maximum.
    module = nn.MaxPool2d(3, 2, 1)
    x = torch.randint(0, 2, (2, 32, 9, 9)).to(torch.float64)
    _check_against_autograd(module, x, "fast")


def test_max_pool2d_nan_wins_the_window_as_in_pytorch() -> None:
    module = nn.MaxPool2d(2)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 1, 1] = math.nan
    grad_output = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    expected = autograd_grads(module, x, grad_output)["input"]
    for impl in IMPLS:
        torch.testing.assert_close(manual.backward(module, x, grad_output, impl=impl)["input"], expected)


def _max_pool1d_grid() -> list[dict[str, Any]]:
    cases = []
    for kernel, stride, padding, dilation, ceil_mode in product((2, 3), (None, 2, 3), (0, 1), (1, 2), (False, True)):
        cases.append(dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
                          ceil_mode=ceil_mode, input=(2, 3, 10)))
    cases.append(dict(kernel_size=4, stride=1, padding=3, dilation=1, ceil_mode=False, input=(1, 2, 4)))
    return cases


def _max_pool1d_id(case: dict[str, Any]) -> str:
    return (
        f"k{case['kernel_size']}-s{case['stride']}-p{case['padding']}-d{case['dilation']}-"
        f"{'ceil' if case['ceil_mode'] else 'floor'}-x{_name(case['input'])}"
    )


MAX_POOL1D_GRID = _max_pool1d_grid()
MAX_POOL1D_CASES = [c for c in MAX_POOL1D_GRID if not pool_rejected_by_pytorch(c, 1)]
MAX_POOL1D_REJECTED = [c for c in MAX_POOL1D_GRID if pool_rejected_by_pytorch(c, 1)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", MAX_POOL1D_CASES, ids=_max_pool1d_id)
def test_max_pool1d_matches_autograd(case: dict[str, Any], impl: str) -> None:
    _check_against_autograd(*_build(nn.MaxPool1d, case), impl)
    _check_against_autograd(*_build(nn.MaxPool1d, case, integer_valued=True), impl)


@pytest.mark.parametrize("case", MAX_POOL1D_REJECTED, ids=_max_pool1d_id)
def test_max_pool1d_configuration_rejected_by_pytorch(case: dict[str, Any]) -> None:
    with pytest.raises(RuntimeError):
        module, x = _build(nn.MaxPool1d, case)
        module(x)


# ---- AvgPool2d / AvgPool1d ------------------------------------------------------------------------------


def _avg_pool2d_grid() -> list[dict[str, Any]]:
    cases = []
    for kernel, stride, padding, ceil_mode, count_include_pad, divisor in product(
        (2, 3, (3, 2)), (None, 1, 2), (0, 1), (False, True), (True, False), (None, 5)
    ):
        cases.append(
            dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                 count_include_pad=count_include_pad, divisor_override=divisor, input=(2, 3, 7, 8))
        )
    cases.append(dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False,
                      divisor_override=None, input=(0, 2, 6, 6)))
    cases.append(dict(kernel_size=(3, 1), stride=(2, 3), padding=(1, 0), ceil_mode=True, count_include_pad=True,
                      divisor_override=None, input=(1, 2, 4, 9)))
    for kernel, padding, size in (((2, 2), 2, 6), ((3, 3), (1, 2), 6), (5, 0, 4)):  # rejected by PyTorch
        cases.append(dict(kernel_size=kernel, stride=None, padding=padding, ceil_mode=False, count_include_pad=True,
                          divisor_override=None, input=(1, 2, size, size)))
    return cases


def _avg_pool2d_id(case: dict[str, Any]) -> str:
    return (
        f"k{_name(case['kernel_size'])}-s{_name(case['stride'])}-p{_name(case['padding'])}-"
        f"{'ceil' if case['ceil_mode'] else 'floor'}-{'incl' if case['count_include_pad'] else 'excl'}pad-"
        f"div{case['divisor_override']}-x{_name(case['input'])}"
    )


AVG_POOL2D_GRID = _avg_pool2d_grid()
AVG_POOL2D_CASES = [c for c in AVG_POOL2D_GRID if not pool_rejected_by_pytorch(c, 2)]
AVG_POOL2D_REJECTED = [c for c in AVG_POOL2D_GRID if pool_rejected_by_pytorch(c, 2)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", AVG_POOL2D_CASES, ids=_avg_pool2d_id)
def test_avg_pool2d_matches_autograd(case: dict[str, Any], impl: str) -> None:
    _check_against_autograd(*_build(nn.AvgPool2d, case), impl)


@pytest.mark.parametrize("case", AVG_POOL2D_REJECTED, ids=_avg_pool2d_id)
def test_avg_pool2d_configuration_rejected_by_pytorch(case: dict[str, Any]) -> None:
    with pytest.raises(RuntimeError):
        module, x = _build(nn.AvgPool2d, case)
        module(x)


def _avg_pool1d_grid() -> list[dict[str, Any]]:
    cases = []
    for kernel, stride, padding, ceil_mode, count_include_pad in product(
        (2, 3, 4), (None, 1, 3), (0, 1, 2), (False, True), (True, False)
    ):
        cases.append(dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                          count_include_pad=count_include_pad, input=(2, 3, 9)))
    return cases


def _avg_pool1d_id(case: dict[str, Any]) -> str:
    return (
        f"k{case['kernel_size']}-s{case['stride']}-p{case['padding']}-{'ceil' if case['ceil_mode'] else 'floor'}-"
        f"{'incl' if case['count_include_pad'] else 'excl'}pad"
    )


AVG_POOL1D_GRID = _avg_pool1d_grid()
AVG_POOL1D_CASES = [c for c in AVG_POOL1D_GRID if not pool_rejected_by_pytorch(c, 1)]
AVG_POOL1D_REJECTED = [c for c in AVG_POOL1D_GRID if pool_rejected_by_pytorch(c, 1)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", AVG_POOL1D_CASES, ids=_avg_pool1d_id)
def test_avg_pool1d_matches_autograd(case: dict[str, Any], impl: str) -> None:
    _check_against_autograd(*_build(nn.AvgPool1d, case), impl)


@pytest.mark.parametrize("case", AVG_POOL1D_REJECTED, ids=_avg_pool1d_id)
def test_avg_pool1d_configuration_rejected_by_pytorch(case: dict[str, Any]) -> None:
    with pytest.raises(RuntimeError):
        module, x = _build(nn.AvgPool1d, case)
        module(x)


def test_avg_pool2d_divisor_by_hand() -> None:
    # 5 wide, k=3, s=2, p=1, ceil_mode: windows [-1, 2), [1, 4), [3, 6) cut at 5 + 1 = 6.
    include = pool.avg_pool2d_divisor((1, 1, 1, 5), (1, 3), (1, 3), (1, 2), (0, 1), count_include_pad=True)
    exclude = pool.avg_pool2d_divisor((1, 1, 1, 5), (1, 3), (1, 3), (1, 2), (0, 1), count_include_pad=False)
    torch.testing.assert_close(include, torch.tensor([[3.0, 3.0, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(exclude, torch.tensor([[2.0, 3.0, 2.0]], dtype=torch.float64))


def test_avg_pool2d_grad_input_by_hand() -> None:
    # Non-overlapping 2x2 windows: each input gets its window's gradient divided by 4.
    grad_output = torch.tensor([[[[4.0, 8.0]]]], dtype=torch.float64)  # (1, 1, 1, 2)
    expected = torch.tensor([[[[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]]]], dtype=torch.float64)
    for grad_input in (pool.avg_pool2d_grad_input, pool.avg_pool2d_grad_input_reference):
        torch.testing.assert_close(grad_input((1, 1, 2, 4), grad_output, 2), expected)


# ---- Adaptive pools -------------------------------------------------------------------------------------

ADAPTIVE_2D_CASES = [
    dict(output_size=1, input=(2, 3, 7, 8)),
    dict(output_size=3, input=(2, 3, 7, 8)),
    dict(output_size=(3, 5), input=(2, 3, 7, 8)),
    dict(output_size=(None, 2), input=(2, 3, 7, 8)),
    dict(output_size=(9, 4), input=(2, 3, 7, 8)),  # more outputs than inputs: overlapping windows
    dict(output_size=(7, 8), input=(1, 2, 7, 8)),
    dict(output_size=2, input=(0, 2, 4, 4)),
]


def _adaptive_id(case: dict[str, Any]) -> str:
    return f"out{_name(case['output_size'])}-x{_name(case['input'])}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ADAPTIVE_2D_CASES, ids=_adaptive_id)
def test_adaptive_avg_pool2d_matches_autograd(case: dict[str, Any], impl: str) -> None:
    _check_against_autograd(*_build(nn.AdaptiveAvgPool2d, case), impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ADAPTIVE_2D_CASES, ids=_adaptive_id)
def test_adaptive_max_pool2d_matches_autograd(case: dict[str, Any], impl: str) -> None:
    _check_against_autograd(*_build(nn.AdaptiveMaxPool2d, case), impl)
    _check_against_autograd(*_build(nn.AdaptiveMaxPool2d, case, integer_valued=True), impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("output_size", [1, 4, 7, 13])
def test_adaptive_avg_pool1d_matches_autograd(output_size: int, impl: str) -> None:
    _check_against_autograd(*_build(nn.AdaptiveAvgPool1d, dict(output_size=output_size, input=(2, 3, 10))), impl)


def test_adaptive_max_pool2d_return_indices() -> None:
    _check_against_autograd(*_build(nn.AdaptiveMaxPool2d, dict(output_size=3, return_indices=True, input=(2, 2, 7, 7))),
                            "fast")


def test_adaptive_windows_by_hand() -> None:
    assert pool.adaptive_windows(7, 3) == [(0, 3), (2, 5), (4, 7)]
    assert pool.adaptive_windows(3, 5) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]


# ---- Unbatched inputs and kinks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, shape",
    [
        (nn.MaxPool2d(2), (3, 6, 6)),
        (nn.MaxPool1d(2), (3, 6)),
        (nn.AvgPool2d(3, 2, 1), (3, 6, 5)),
        (nn.AvgPool1d(3, 2, 1), (3, 7)),
        (nn.AdaptiveAvgPool2d(2), (3, 5, 5)),
        (nn.AdaptiveAvgPool1d(2), (3, 5)),
        (nn.AdaptiveMaxPool2d(2), (3, 5, 5)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else _name(v),
)
def test_unbatched_input(module: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    for impl in IMPLS:
        _check_against_autograd(module, x, impl)


def test_max_pool2d_kinks_mark_exactly_the_tied_maxima() -> None:
    x = torch.tensor([[[[1.0, 3.0, 0.0, 2.0], [3.0, 0.0, 1.0, 0.0]]]], dtype=torch.float64)  # (1, 1, 2, 4)
    kinks = pool.max_pool2d_kinks(x, (1, 2), 0.0, 2)
    expected = torch.tensor([[[[False, True, False, False], [True, False, False, False]]]])
    assert torch.equal(kinks, expected)


def test_max_pool2d_kinks_with_a_step_mark_near_ties() -> None:
    x = torch.tensor([[[[1.0, 1.0 + 1e-7, 0.0, 2.0]]]], dtype=torch.float64)  # (1, 1, 1, 4)
    assert pool.max_pool2d_kinks(x, (1, 2), 1e-6, (1, 2)).tolist() == [[[[True, True, False, False]]]]
    assert pool.max_pool2d_kinks(x, (1, 2), 0.0, (1, 2)).tolist() == [[[[False, False, False, False]]]]


def test_max_pool2d_reference_refuses_large_inputs() -> None:
    module = nn.MaxPool2d(3, 1, 1)
    x = torch.randn(1, 1, 100, 100, dtype=torch.float64)
    with pytest.raises(manual.ManualGradError, match="REFERENCE_MAX_STEPS"):
        manual.backward(module, x, torch.randn(1, 1, 100, 100, dtype=torch.float64), impl="reference")


def test_avg_pool_float32() -> None:
    module = nn.AvgPool2d(3, 2, 1, ceil_mode=True)
    x = torch.randn(2, 3, 8, 8)
    grad_output = torch.randn_like(module(x))
    grads = manual.backward(module, x, grad_output)
    assert grads["input"].dtype == torch.float32
    assert_close_rel(grads["input"], autograd_grads(module, x, grad_output)["input"], rtol=1e-6)
