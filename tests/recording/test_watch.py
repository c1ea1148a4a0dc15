"""The C++ output-gradient hooks (GradWatch in csrc/fused_sums.cpp): same sums as the Python hooks, in backward
order, never an exception into backward, nothing logged by a hook of an earlier step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import diagnostics as dx
from diagnostics.recording import native

from tests.conftest import require_fused_kernels


@pytest.fixture()
def watch():
    native.reset()
    require_fused_kernels()
    w = native.kernels().GradWatch()
    w.begin(1)
    yield w
    native.reset()


def reference(g: torch.Tensor) -> list[float]:
    g = g.detach().double()
    return [float(g.abs().sum()), float((g * g).sum()), float(g.abs().max()), float((~torch.isfinite(g)).sum())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (0, 3)])
def test_sums_of_the_output_gradient(watch, dtype, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = (x * 3).to(dtype)
    watch.watch(y, 4, 2)
    seen = {}
    y.register_hook(lambda g: seen.setdefault("g", g))
    (y.double() ** 3).sum().backward()
    rows, meta = watch.take()
    assert meta.tolist() == [[4, 2, 1, y.numel()]]
    if y.numel():
        assert rows[0].tolist() == pytest.approx(reference(seen["g"]), rel=1e-6)
    assert watch.take()[1].shape == (0, 4)                  # taken once


def test_gradients_the_kernels_cannot_read_are_reduced_from_a_copy(watch):
    x = torch.randn(4, 6, requires_grad=True)
    y = x * 1.0
    watch.watch(y, 0, 0)
    y.sum().backward()                                      # the gradient is an expanded (strided 0) tensor of ones
    rows, _ = watch.take()
    assert rows[0].tolist() == [24.0, 24.0, 1.0, 0.0]
    z = (x * 1.0).to(torch.float16)                         # half precision
    watch.watch(z, 1, 0)
    (z.float() * 2).sum().backward()
    rows, meta = watch.take()
    assert meta[0, 0] == 1 and rows[0].tolist() == [48.0, 96.0, 2.0, 0.0]


def test_non_finite_gradients_are_counted_not_raised(watch):
    x = torch.randn(5, requires_grad=True)
    y = x * 1.0
    watch.watch(y, 0, 0)
    (y * torch.tensor([1.0, float("nan"), float("inf"), 1.0, 1.0])).sum().backward()
    rows, _ = watch.take()
    assert rows[0, 3] == 2 and math.isnan(rows[0, 2])


def test_a_hook_of_an_earlier_generation_logs_nothing(watch):
    x = torch.randn(3, requires_grad=True)
    y = x * 2
    watch.watch(y, 0, 0)
    watch.begin(2)                                          # the step was closed before this backward
    y.sum().backward()
    assert watch.take()[1].shape == (0, 4)


def test_backward_order_is_shared_with_python_hooks(watch):
    x = torch.randn(3, requires_grad=True)
    a = x * 2
    b = a * 3
    watch.watch(b, 1, 0)
    order = []
    a.register_hook(lambda g: order.append(watch.next_seq()))   # a Python hook, later in backward
    watch.watch(a, 0, 0)
    b.sum().backward()
    _, meta = watch.take()
    assert [(layer, seq) for layer, _, seq, _ in meta.tolist()] == [(1, 1), (0, 3)] and order == [2]


def test_an_in_place_op_after_the_hook_does_not_move_it(watch):
    x = torch.randn(6, requires_grad=True)
    y = x * 1.0                                             # a BatchNorm output, then an in-place ReLU
    watch.watch(y, 0, 0)
    y.relu_()
    (y * 2).sum().backward()
    rows, _ = watch.take()
    # dL/dy before the ReLU is 2 where y > 0 and 0 elsewhere: the hook sees the gradient the ReLU passed back
    positive = int((x > 0).sum())
    assert rows[0, 0] == pytest.approx(2.0 * positive)


def test_the_monitor_records_the_same_with_and_without_the_cpp_hooks(monkeypatch):
    require_fused_kernels()

    def run(cpp: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten(),
                              nn.Linear(4 * 36, 3))
        with dx.GradientMonitor(model) as mon:
            if not cpp:
                mon._live.watch = None                      # Python output-gradient hooks, same kernels
            for _ in range(3):
                x = torch.randn(8, 1, 8, 8)
                loss = model(x).square().mean()
                loss.backward()
                mon.step(loss=loss)
                model.zero_grad()
        return mon.frame()

    a, b = run(True), run(False)
    for column in ("act_grad_norm", "act_grad_mean_abs", "act_grad_max_abs", "act_grad_nonfinite"):
        assert a[column].tolist() == pytest.approx(b[column].tolist(), rel=1e-12, nan_ok=True), column
    assert a["act_grad_norm"].notna().sum() == 5 * 3
