"""Every misuse of the monitor gets a MonitorError that says what to do, and leaves the model exactly as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diagnostics as dx
from tests.conftest import hook_state


def model_and_state():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    return model, hook_state(model)


def backward(model):
    model(torch.randn(2, 3)).sum().backward()


@pytest.mark.parametrize("options, match", [
    ({"every": 2.5}, "every must be a positive whole number"),
    ({"every": 0}, "every must be a positive whole number"),
    ({"every": True}, "every must be"),
    ({"histogram_every": -1}, "histogram_every must be a whole number >= 0"),
    ({"flush_every": 0}, "flush_every must be a positive whole number"),
    ({"kernel_every": 0}, "kernel_every"),
    ({"kernel_max_mb": -1}, "kernel_max_mb"),
    ({"on_nonfinite": "explode"}, "on_nonfinite"),
    ({"layers": ["nothing.*"]}, r"match no layer of this model; layers are named like \['0', '1', '2'"),
    ({"layer_types": nn.Conv2d}, r"layer_types=\['Conv2d'\] match no layer"),
    ({"layers": "0"}, None),
    ({"optimizer": object()}, "optimizer must be a torch.optim.Optimizer"),
    ({"optimizer": torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)}, "holds none of this model's"),
    ({"store": 3}, "store must be a RunStore or a folder path"),
    ({"run_name": 5}, "run_name must be a string"),
], ids=["every-float", "every-zero", "every-bool", "histogram-negative", "flush-zero", "kernel-every",
        "kernel-mb", "on-nonfinite", "layers-no-match", "types-no-match", "layers-string-ok", "not-optimizer",
        "foreign-optimizer", "store-type", "run-name-type"])
def test_bad_options_are_refused_before_anything_is_attached(options, match):
    model, before = model_and_state()
    if match is None:
        with dx.GradientMonitor(model, **options) as mon:
            backward(model)
            mon.step()
        assert list(mon.frame()["layer"]) == ["0"]
    else:
        with pytest.raises(dx.MonitorError, match=match):
            dx.GradientMonitor(model, **options).attach()
    assert hook_state(model) == before


def test_a_store_path_is_accepted(tmp_path):
    model, _ = model_and_state()
    with dx.GradientMonitor(model, store=str(tmp_path / "runs")) as mon:
        backward(model)
        mon.step()
    assert dx.RunStore(tmp_path / "runs").step_frame(mon.run_id)["step"].tolist() == [0]


def test_a_store_path_that_is_a_file_fails_cleanly_and_a_new_monitor_can_attach(tmp_path):
    model, before = model_and_state()
    path = tmp_path / "runs"
    path.write_text("not a folder")
    with pytest.raises(dx.MonitorError, match="could not be created"):
        with dx.GradientMonitor(model, store=path):
            pass
    assert hook_state(model) == before
    with dx.GradientMonitor(model) as mon:                      # the model accepts a new monitor
        backward(model)
        mon.step()
    assert hook_state(model) == before


def test_step_twice_after_one_backward_is_refused():
    model, before = model_and_state()
    with pytest.raises(dx.MonitorError, match="twice after one backward"):
        with dx.GradientMonitor(model) as mon:
            backward(model)
            mon.step()
            mon.step()
    assert hook_state(model) == before
    assert mon.steps_seen == 1


def test_step_before_any_backward_is_refused():
    model, before = model_and_state()
    with pytest.raises(dx.MonitorError, match="before any backward"):
        with dx.GradientMonitor(model) as mon:
            model(torch.randn(2, 3))
            mon.step()
    assert hook_state(model) == before


@pytest.mark.parametrize("kwargs, match", [
    ({"loss": torch.ones(3)}, "loss must be a scalar"),
    ({"loss": "0.5"}, "loss must be a number"),
    ({"accuracy": None}, "metric 'accuracy' must be a number"),
    ({"accuracy": "high"}, "metric 'accuracy' must be a number"),
    ({"step": 3}, "'step' is a column the monitor writes itself"),
    ({"grad_norm_total": 1.0}, "'grad_norm_total' is a column"),
], ids=["loss-vector", "loss-string", "metric-none", "metric-string", "metric-step", "metric-total"])
def test_bad_step_values_are_refused_and_the_step_can_be_retried(kwargs, match):
    model, before = model_and_state()
    with dx.GradientMonitor(model) as mon:
        backward(model)
        with pytest.raises(dx.MonitorError, match=match):
            mon.step(**kwargs)
        mon.step(loss=0.5, accuracy=1.0)                          # nothing was consumed by the refusal
    assert mon.step_frame()["step"].tolist() == [0]
    assert hook_state(model) == before


def test_an_exception_in_training_removes_every_hook_and_marks_the_run(tmp_path):
    model, before = model_and_state()
    store = dx.RunStore(tmp_path / "runs")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ZeroDivisionError):
        with dx.GradientMonitor(model, store=store, optimizer=opt) as mon:
            backward(model)
            mon.step()
            opt.step()
            raise ZeroDivisionError("user code")
    assert hook_state(model) == before
    meta = store.meta(mon.run_id)
    assert meta["status"] == "crashed" and "ZeroDivisionError" in meta["error"]
    assert store.step_frame(mon.run_id)["step"].tolist() == [0]


def test_sparse_embedding_outside_the_filters_does_not_break_the_step():
    model = nn.ModuleDict({"embed": nn.Embedding(10, 4, sparse=True), "head": nn.Linear(4, 1)})
    with dx.GradientMonitor(model, layers=["head"]) as mon:
        model["head"](model["embed"](torch.tensor([1, 2, 3]))).sum().backward()
        mon.step()
    assert list(mon.frame()["layer"]) == ["head"]


def test_the_step_says_whether_the_batch_or_the_loss_was_nonfinite():
    model = nn.Sequential(nn.Linear(3, 2))
    batches = [torch.randn(4, 3), torch.full((4, 3), float("nan")), torch.randn(4, 3)]
    with dx.GradientMonitor(model, on_nonfinite="ignore") as mon:
        for i, x in enumerate(batches):
            out = model(x)
            loss = torch.log(out.abs().sum() * 0) if i == 2 else out.sum()     # log(0): the loss alone
            loss.backward()
            mon.step(loss=loss)
            model.zero_grad()
    steps = mon.step_frame()
    assert steps["input_nonfinite"].tolist() == [0, 12, 0]
    assert steps["loss_nonfinite"].tolist() == [False, True, True]
