"""torch.compile: weight statistics from p.grad on every step, activations on eager steps, no breaks or recompiles.

Dynamo's behaviour is counted with the ``aot_eager`` backend (Inductor only in the benchmark).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import diagnostics as dx
from tests.conftest import hook_state


def hooks_of(model: nn.Module) -> dict:
    """hook_state without the attributes Dynamo itself sets on parameters when it compiles."""
    return {k: tuple(tuple(a for a in v if not str(a).startswith("_dynamo")) if isinstance(v, tuple) else v
                     for v in value) for k, value in hook_state(model).items()}


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))


def train(model, mon, opt, steps, grads):
    torch.manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss=loss)
        grads.append({n.removeprefix("_orig_mod."): p.grad.detach().double().clone()
                      for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("when", ["before-first-call", "after-first-call"])
def test_compiled_steps_carry_no_hooks_and_weight_statistics_are_right(when):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = net()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = hooks_of(model)
    if when == "after-first-call":
        compiled(torch.randn(4, 3, 8, 8)).sum().backward()
        opt.zero_grad()
    grads: list[dict[str, torch.Tensor]] = []
    with dx.GradientMonitor(compiled, optimizer=opt, eager_every=5) as mon:
        train(compiled, mon, opt, 11, grads)
    assert hooks_of(model) == before
    assert counter.frame_count == 1                         # one compile: no recompile, no graph break
    assert not torch._dynamo.utils.counters["graph_break"]
    frame, steps = mon.frame(), mon.step_frame()
    assert steps["activation_stats"].tolist() == [1.0 if s in (0, 5, 10) else 0.0 for s in range(11)]
    for step, g in enumerate(grads):
        rows = frame[frame.step == step].set_index("layer")
        for layer in ("0", "2", "6"):
            expected = float(g[f"{layer}.weight"].norm())
            assert math.isclose(rows.loc[layer, "weight_grad_norm"], expected, rel_tol=1e-5), (step, layer)
            assert rows.loc[layer, "update_ratio"] > 0
        assert rows.loc["0", "kind"] == "leaf"                # seen running on the first (eager) step
        has_acts = step in (0, 5, 10)
        assert ("1" in rows.index) == has_acts                  # ReLU rows exist only where they were seen
        assert rows["act_std"].notna().any() == has_acts


def test_eager_steps_record_what_an_uncompiled_model_records():
    torch._dynamo.reset()
    eager_model, compiled_model = net(), net()
    compiled = torch.compile(compiled_model, backend="aot_eager")
    frames = []
    for model, monitored in ((eager_model, eager_model), (compiled_model, compiled)):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with dx.GradientMonitor(monitored, optimizer=opt, eager_every=3) as mon:
            train(monitored, mon, opt, 4, [])
        frames.append(mon.frame())
    plain, comp = frames
    for step in (0, 3):
        a = plain[plain.step == step].set_index("layer")
        b = comp[comp.step == step].set_index("layer")
        assert list(a.index) == list(b.index)
        for column in ("weight_grad_norm", "act_grad_norm", "act_mean", "act_std", "calls", "depth"):
            torch.testing.assert_close(torch.tensor(b[column].to_numpy(float)),
                                       torch.tensor(a[column].to_numpy(float)), rtol=1e-4, atol=1e-7,
                                       equal_nan=True, msg=f"{step} {column}")


def test_weight_statistics_alone_never_leave_the_compiled_graph():
    torch._dynamo.reset()
    model = net()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with dx.GradientMonitor(compiled, optimizer=opt, activations=False) as mon:
        train(compiled, mon, opt, 3, [])
    assert counter.frame_count == 1 and "activation_stats" in mon.step_frame()
    assert not mon.step_frame()["activation_stats"].any()
    assert len(mon.frame()) == 3 * 3                            # the three layers with weights, every step
