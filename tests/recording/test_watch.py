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
                mon._live.watch = None                      # Python hooks, same kernels
                mon._live.refresh()
            for _ in range(3):
                x = torch.randn(8, 1, 8, 8)
                loss = model(x).square().mean()
                loss.backward()
                mon.step(loss=loss)
                model.zero_grad()
        return mon.frame()

    a, b = run(True), run(False)
    for column in ("act_grad_norm", "act_grad_mean_abs", "act_grad_max_abs", "act_grad_nonfinite", "act_mean",
                   "act_std", "act_zero_frac", "act_nonfinite", "calls", "depth"):
        assert a[column].tolist() == pytest.approx(b[column].tolist(), rel=1e-12, nan_ok=True), column
    assert a["act_grad_norm"].notna().sum() == 5 * 3


def act_reference(x: torch.Tensor) -> list[float]:
    x = x.detach().double()
    return [float(x.sum()), float((x * x).sum()), float((x != 0).sum()), float((~torch.isfinite(x)).sum())]


def test_forward_reduces_logs_and_watches_during_a_pass(watch):
    x = torch.randn(4, 6, requires_grad=True)
    y = x * 2
    y.data[0, 0] = 0.0
    assert not watch.forward(y, 3, True)                 # no pass under way: the Python hook takes the call
    watch.set_pass(5)
    assert watch.next_forward_seq() == 1                 # a Python hook's call takes order 1
    assert watch.forward(y, 3, True)
    z = torch.randn(3).to(torch.float64)                  # no gradient: reduced, not watched
    assert watch.forward(z, 4, False)
    rows, meta = watch.take_forward()
    assert rows[0].tolist() == pytest.approx(act_reference(y))
    assert rows[1].tolist() == pytest.approx(act_reference(z))
    assert meta.tolist() == [[3, 5, 2, 24, 1, 1], [4, 5, 3, 3, 0, 0]]
    y.sum().backward()
    grads, gmeta = watch.take()
    assert gmeta.tolist() == [[3, 5, 1, 24]]               # only y was watched
    assert grads[0].tolist() == pytest.approx([24.0, 24.0, 1.0, 0.0])
    assert watch.take_forward()[1].shape == (0, 6)       # taken once


def test_forward_leaves_every_other_call_to_python(watch):
    watch.set_pass(0)
    x = torch.randn(4, 6, requires_grad=True)
    with torch.no_grad():
        assert not watch.forward(x * 2, 0, True)         # under no_grad (a checkpoint may recompute it)
    assert not watch.forward((x * 2).t(), 0, True)       # strided
    assert not watch.forward((x * 2).half(), 0, True)    # a dtype the kernels do not read
    seen = []

    def recomputed(g):                                  # a forward inside backward (a checkpoint's recomputation)
        seen.append(watch.forward(torch.randn(3, requires_grad=True) * 1, 0, True))
    y = x * 2
    y.register_hook(recomputed)
    y.sum().backward()
    assert seen == [False]
    assert watch.take_forward()[1].shape == (0, 6)
    watch.begin(2)                                       # a new step: no pass until the model's next call
    assert not watch.forward(x * 2, 0, True)


class Twice(nn.Module):
    """Calls its layer twice and once more under no_grad, its head through a reentrant checkpoint, and a fp16
    layer (which the kernels do not read)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)
        self.low = nn.Linear(3, 3).half()

    def forward(self, x):
        h = self.body(x) + self.body(x * 0.5)
        with torch.no_grad():
            self.body(x)                                   # not part of the step
        out = torch.utils.checkpoint.checkpoint(self.head, h, use_reentrant=True)
        return out + self.low(out.detach().half()).float()


class Counting:
    """A GradWatch that counts the calls its forward path took."""

    def __init__(self, inner) -> None:
        self.inner, self.taken = inner, 0

    def forward(self, *args):
        taken = self.inner.forward(*args)
        self.taken += taken
        return taken

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_the_forward_path_and_the_python_hooks_record_the_same_step():
    """Shared layers, no_grad calls, a reentrant checkpoint, calls outside the model, an evaluation in training
    mode that is never backpropagated, and a fp16 layer: same rows through the C++ path and the Python hooks."""
    require_fused_kernels()

    def run(cpp: bool):
        torch.manual_seed(0)
        model = Twice()
        with dx.GradientMonitor(model) as mon:
            live = mon._live
            live.watch = Counting(live.watch) if cpp else None
            live.refresh()
            for _ in range(3):
                x = torch.randn(5, 6)
                model(torch.randn(5, 6))                    # evaluated, never backpropagated
                loss = model(x).square().mean() + model.body(x).mean()     # body also outside the model
                loss.backward()
                mon.step(loss=loss)
                model.zero_grad()
        return mon.frame(), live.watch

    (a, watch), (b, _) = run(True), run(False)
    assert watch.taken == 3 * 2 * 2 * 2            # steps x passes x calls of body x its layers (the rest: Python)
    assert len(a) == len(b) and a["layer"].tolist() == b["layer"].tolist()
    for column in ("calls", "depth", "act_mean", "act_std", "act_zero_frac", "act_nonfinite", "act_grad_norm",
                   "act_grad_max_abs", "weight_grad_norm"):
        # rel 1e-6: the fp16 layer's output gradient is summed in float64 by GradWatch, in float32 by PyTorch
        assert a[column].tolist() == pytest.approx(b[column].tolist(), rel=1e-6, nan_ok=True), column
    assert a["act_mean"].notna().all()


def test_parameter_counters_count_backward_and_leave_with_the_monitor():
    require_fused_kernels()
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    mon = dx.GradientMonitor(model, activations=False)          # no output hook: the counters alone see backward
    mon.attach()
    watch = mon._live.watch
    model(torch.randn(2, 3)).sum().backward()
    assert watch.take_counted() == 4                             # 4 parameters
    model(torch.randn(2, 3)).sum().backward()
    mon.step()
    with pytest.raises(dx.MonitorError, match="twice"):
        mon.step()
    mon.detach()
    model(torch.randn(2, 3)).sum().backward()
    assert watch.take_counted() == 0                             # removed with the monitor
