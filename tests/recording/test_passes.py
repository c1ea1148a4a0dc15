"""Which forward passes count: checkpoint recomputation, train-mode evaluations, closure optimizers, names."""

from __future__ import annotations

import math

import pytest
import torch
import torch.utils.checkpoint as cp
from torch import nn

import diagnostics as dx
from tests.conftest import hook_state

STAT_COLUMNS = ["calls", "depth", "weight_grad_norm", "bias_grad_norm", "weight_norm", "act_grad_norm",
                "act_mean", "act_std", "act_zero_frac"]


class Blocks(nn.Module):
    """Three small blocks, optionally run through torch.utils.checkpoint."""

    def __init__(self, checkpoint: str | None = None) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        for block in self.blocks:
            if self.checkpoint is None:
                x = block(x)
            else:
                x = cp.checkpoint(block, x, use_reentrant=self.checkpoint == "reentrant")
        return self.head(x)


def record(model, steps=2, extra_pass=None, seed=0):
    torch.manual_seed(seed)
    xs = [torch.randn(4, 8, requires_grad=True) for _ in range(steps)]
    with dx.GradientMonitor(model) as mon:
        for x in xs:
            if extra_pass is not None:
                extra_pass(model)
            model(x).pow(2).mean().backward()
            mon.step()
            model.zero_grad()
    return mon.frame().sort_values(["step", "layer"]).reset_index(drop=True)


@pytest.mark.parametrize("mode", ["reentrant", "non-reentrant"])
def test_checkpointed_blocks_record_like_plain_ones(mode):
    torch.manual_seed(1)
    plain = Blocks()
    torch.manual_seed(1)
    checkpointed = Blocks(checkpoint=mode)
    expected, actual = record(plain), record(checkpointed)
    assert list(actual["layer"]) == list(expected["layer"])
    for column in STAT_COLUMNS:
        torch.testing.assert_close(torch.tensor(actual[column].to_numpy(dtype=float)),
                                   torch.tensor(expected[column].to_numpy(dtype=float)), rtol=1e-5, atol=1e-7,
                                   equal_nan=True, msg=column)
    last = actual[actual.step == 1].sort_values("depth")
    assert list(last["layer"]) == ["blocks.0.0", "blocks.0.1", "blocks.1.0", "blocks.1.1", "blocks.2.0",
                                   "blocks.2.1", "head"]


def test_a_train_mode_forward_without_backward_is_not_pooled():
    def evaluate(model):
        model(torch.full((4, 8), 5.0))                          # train mode, grad enabled, never backpropagated

    torch.manual_seed(2)
    a = Blocks()
    torch.manual_seed(2)
    b = Blocks()
    expected, actual = record(a), record(b, extra_pass=evaluate)
    for column in STAT_COLUMNS:
        torch.testing.assert_close(torch.tensor(actual[column].to_numpy(dtype=float)),
                                   torch.tensor(expected[column].to_numpy(dtype=float)), equal_nan=True,
                                   msg=column)


def test_a_frozen_model_in_training_mode_still_gets_activation_rows():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model.requires_grad_(False)
    head = nn.Linear(4, 1)
    with dx.GradientMonitor(model) as mon:
        head(model(torch.randn(3, 4))).sum().backward()
        mon.step()
    frame = mon.frame()
    assert list(frame["layer"]) == ["0", "1"]
    assert frame["act_std"].notna().all() and frame["weight_norm"].notna().iloc[0]


def test_parametrized_weights_belong_to_the_module_they_parametrize():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.nn.utils.parametrizations.weight_norm(model[0])
    with dx.GradientMonitor(model) as mon:
        model(torch.randn(3, 5)).sum().backward()
        mon.step()
    frame = mon.frame().set_index("layer")
    assert list(frame.index) == ["0", "1", "2"]
    g = [model[0].parametrizations.weight.original0.grad, model[0].parametrizations.weight.original1.grad]
    expected = math.sqrt(sum(float(t.double().pow(2).sum()) for t in g))
    assert math.isclose(frame.loc["0", "weight_grad_norm"], expected, rel_tol=1e-5)
    assert frame.loc["0", "kind"] == "leaf" and frame.loc["0", "calls"] == 1
    assert set(mon.param_frame()["param"]) == {
        "0.parametrizations.weight.original0", "0.parametrizations.weight.original1", "0.bias", "2.weight",
        "2.bias"}


def test_wrapper_prefixes_are_left_out_of_names():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    wrapped = nn.DataParallel(model)                     # the same "module." prefix as DistributedDataParallel
    with dx.GradientMonitor(wrapped) as mon:
        wrapped(torch.randn(2, 3)).sum().backward()
        mon.step()
    assert list(mon.frame()["layer"]) == ["0", "1", "2"]
    assert set(mon.param_frame()["param"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}


# --- optimizers -----------------------------------------------------------------------------------------------

def test_lbfgs_records_one_step_per_optimizer_step_with_its_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    starts, ends, first_losses = [], [], []

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with dx.GradientMonitor(model, optimizer=opt) as mon:
        for _ in range(3):
            starts.append(model[0].weight.detach().clone())
            with torch.no_grad():
                first_losses.append(float(nn.functional.mse_loss(model(x), y)))
            opt.step(closure)
            ends.append(model[0].weight.detach().clone())
    steps, frame = mon.step_frame(), mon.frame()
    assert list(steps["step"]) == [0, 1, 2] and mon.steps_seen == 3
    torch.testing.assert_close(torch.tensor(steps["loss"].to_numpy()), torch.tensor(first_losses, dtype=torch.float64), rtol=1e-6,
                               atol=0)
    first = frame[frame.layer == "0"].sort_values("step")
    for step, (w0, w1) in enumerate(zip(starts, ends)):
        expected = float((w1 - w0).double().norm() / w0.double().norm())
        assert math.isclose(first["update_ratio"].iloc[step], expected, rel_tol=1e-4)
        assert first["calls"].iloc[step] == 1


def test_a_closure_that_calls_step_itself_is_recorded_once():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dx.GradientMonitor(model, optimizer=opt) as mon:
        for _ in range(2):
            def closure():
                opt.zero_grad()
                loss = model(torch.randn(5, 3)).pow(2).mean()
                loss.backward()
                mon.step(loss=loss, phase=1.0)
                return loss
            opt.step(closure)
    steps = mon.step_frame()
    assert list(steps["step"]) == [0, 1] and (steps["phase"] == 1.0).all()
    assert mon.frame()["update_ratio"].gt(0).all()


class Wrapped:
    """A stand-in for accelerate's AcceleratedOptimizer: the torch optimizer is its .optimizer."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self, closure=None):
        return self.optimizer.step(closure)


def test_a_wrapped_optimizer_is_unwrapped():
    model = nn.Linear(3, 2)
    opt = Wrapped(torch.optim.SGD(model.parameters(), lr=0.1))
    with dx.GradientMonitor(model, optimizer=opt) as mon:
        model(torch.randn(4, 3)).sum().backward()
        mon.step()
        opt.step()
    assert mon.frame()["update_ratio"].iloc[0] > 0


def test_a_subset_optimizer_marks_what_it_holds():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    opt = torch.optim.SGD(model[1].parameters(), lr=0.1)
    with dx.GradientMonitor(model, optimizer=opt) as mon:
        model(torch.randn(4, 3)).sum().backward()
        mon.step()
        opt.step()
    frame = mon.frame().set_index("layer")
    assert frame.loc["0", "in_optimizer"] == False and frame.loc["1", "in_optimizer"] == True   # noqa: E712
    assert math.isnan(frame.loc["0", "update_ratio"]) and frame.loc["1", "update_ratio"] > 0
    params = mon.param_frame().set_index("param")
    assert not params.loc["0.weight", "in_optimizer"] and params.loc["1.weight", "in_optimizer"]


def test_failed_steps_leave_the_model_untouched():
    model = nn.Linear(2, 1)
    before = hook_state(model)
    with pytest.raises(dx.MonitorError, match="before any backward"):
        with dx.GradientMonitor(model) as mon:
            mon.step()
    assert hook_state(model) == before


def test_compile_prefix_is_left_out_of_names():
    from diagnostics.recording.layers import LayerTable

    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    table = LayerTable(torch.compile(model, backend="aot_eager"))        # not run: the names only
    assert sorted(table.rows) == ["", "0", "1"] and table.root_type == "Sequential"


def test_a_resumed_training_numbers_its_steps_from_its_global_step():
    model = nn.Linear(3, 1)
    with dx.GradientMonitor(model, first_step=10, every=4) as mon:
        for _ in range(5):
            model(torch.randn(2, 3)).sum().backward()
            mon.step()
    assert mon.step_frame()["step"].tolist() == [12] and mon.steps_seen == 5


def test_annotate_adds_values_known_after_the_optimizer_step():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dx.GradientMonitor(model, optimizer=opt) as mon:
        model(torch.randn(2, 3)).sum().backward()
        mon.step()
        opt.step()
        assert mon.annotate(loss=0.25, logged=torch.tensor(3.0))
        with pytest.raises(dx.MonitorError, match="'grad_norm_total' is a column"):
            mon.annotate(grad_norm_total=1.0)
    row = mon.step_frame().iloc[0]
    assert row["loss"] == 0.25 and row["logged"] == 3.0
    assert not mon.annotate(late=1.0)                             # already stored
