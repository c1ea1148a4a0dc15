"""Per-unit activity (``unit_activity=True``): the unit axis, the window, pooling of calls, and the options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import diagnostics as dx
from diagnostics.recording.units import UnitActivity, active_units, dead_fraction, own_axis


def _train(model: nn.Module, batches, **options) -> dx.GradientMonitor:
    with dx.GradientMonitor(model, unit_activity=True, **options) as mon:
        for x in batches:
            loss = model(x).float().pow(2).mean()
            loss.backward()
            mon.step(loss=loss)
            model.zero_grad()
    return mon


def _rows(frame, layer):
    return frame[frame["layer"] == layer].sort_values("step")


def test_dead_linear_units_are_counted_once_the_window_is_full():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight[:4] = 0.0
        model[0].bias[:4] = -1.0                             # 4 of 16 ReLU units can never fire
    frame = _train(model, [torch.randn(64, 8) for _ in range(5)], unit_window=3).frame()
    relu = _rows(frame, "1")
    assert list(relu["units"]) == [16] * 5
    assert relu["dead_units"].iloc[:2].isna().all()          # fewer than 3 recordings: no verdict
    assert list(relu["dead_units"].iloc[2:]) == [0.25] * 3
    linear = _rows(frame, "0")                               # -1 is a value: the Linear's units are all active
    assert list(linear["dead_units"].iloc[2:]) == [0.0] * 3


def test_conv_outputs_count_channels_and_the_relu_inherits_the_axis():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight[:3] = 0.0
        conv.bias[:3] = -0.5                                 # channels 0-2 dead after the ReLU
    model = nn.Sequential(conv, nn.Identity(), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    frame = _train(model, [torch.randn(4, 3, 6, 6) for _ in range(2)], unit_window=2).frame()
    assert list(_rows(frame, "0")["units"]) == [8, 8]       # conv: channels, not width
    relu = _rows(frame, "2")
    assert list(relu["units"]) == [8, 8]                     # the ReLU took the conv's channel axis
    assert relu["dead_units"].iloc[1] == pytest.approx(3 / 8)
    assert list(_rows(frame, "4")["units"]) == [5, 5]       # linear: the last axis


def test_sequences_use_the_feature_axis_and_a_unit_that_dies_late_is_dead_only_after_a_full_window():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 2))
    window, frames = 3, []
    with dx.GradientMonitor(model, unit_activity=True, unit_window=window) as mon:
        for step in range(7):
            if step == 2:
                with torch.no_grad():                        # unit 0 dies at step 2
                    model[0].weight[0] = 0.0
                    model[0].bias[0] = -1.0
            loss = model(torch.randn(4, 5, 6)).pow(2).mean()  # (batch, time, features)
            loss.backward()
            mon.step(loss=loss)
            model.zero_grad()
        frames = mon.frame()
    relu = _rows(frames, "1")
    assert list(relu["units"]) == [10] * 7
    # unit 0 was last active at step 1: dead from step 1 + window = 4 on, not before
    assert list(relu["dead_units"].iloc[2:4]) == [0.0, 0.0]
    assert list(relu["dead_units"].iloc[4:]) == [0.1] * 3


def test_a_module_called_twice_is_active_where_either_call_was():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.act = nn.ReLU()
            with torch.no_grad():
                self.lin.weight.copy_(torch.eye(2))
                self.lin.bias.zero_()

        def forward(self, x):
            return self.act(self.lin(x[0])) + self.act(self.lin(x[1]))

    model = Twice()
    x = torch.stack([torch.tensor([[1.0, -1.0]]), torch.tensor([[-1.0, -1.0]])]).requires_grad_()
    frame = _train(model, [x], unit_window=1).frame()
    act = _rows(frame, "act")
    assert act["calls"].iloc[0] == 2 and act["dead_units"].iloc[0] == 0.5   # unit 1 never fired in either call


def test_off_by_default_and_options_checked():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with dx.GradientMonitor(model) as mon:
        model(torch.randn(2, 3)).sum().backward()
        mon.step()
    frame = mon.frame()
    assert (frame["units"] == 0).all() and frame["dead_units"].isna().all()
    with pytest.raises(dx.MonitorError, match="activations=True"):
        dx.GradientMonitor(model, unit_activity=True, activations=False)
    with pytest.raises(dx.MonitorError, match="unit_window"):
        dx.GradientMonitor(model, unit_activity=True, unit_window=0)


def test_unit_activity_reduction_matches_a_direct_computation():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6).relu()
    x[:, 2] = 0.0
    assert active_units(x, 1).tolist() == [True, True, False, True]
    assert active_units(x, -1).shape == (6,)
    assert active_units(torch.tensor(0.0), -1).tolist() == [False]
    assert active_units(torch.tensor([[math.nan, 0.0]]), -1).tolist() == [True, False]   # NaN is not "dead"
    assert own_axis(nn.Conv1d(2, 2, 1)) == 1 and own_axis(nn.Linear(2, 2)) == -1 and own_axis(nn.GELU()) is None


def test_activity_state_restarts_when_the_unit_count_changes():
    state = UnitActivity(window=2)
    assert math.isnan(state.update("a", np.array([True, False]))[1])
    assert state.update("a", np.array([True, False])) == (2, 0.5)
    assert math.isnan(state.update("a", np.array([True, False, True]))[1])    # 3 units: a new window
    assert state.update("a", np.array([True, False, True])) == (3, pytest.approx(1 / 3))
    assert math.isnan(dead_fraction(np.array([], dtype=np.int64), 5, 2))
