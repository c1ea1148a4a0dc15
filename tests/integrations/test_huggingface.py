"""GradientFlowCallback under real transformers Trainers on CPU (tiny GPT-2 and BERT from configs), checked
against the Trainer's own logs and float64 copies of the gradients taken independently at the same point."""

from __future__ import annotations

import functools
import math
import tempfile
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import diagnostics as dx
from tests.conftest import hook_state
from tests.integrations.launch import run_script
from tests.integrations.untouched import added_by, check_untouched

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from diagnostics.integrations.huggingface import GradientFlowCallback, _refuse_unsupported  # noqa: E402
from tests.integrations.hf_setup import (MAX_GRAD_NORM, Capture, CapturingTrainer, Tokens, arguments,  # noqa: E402
                                         bert, gpt2, logged)

@functools.cache
def trainer_attributes(make_model: Any) -> set[str]:
    """What the Trainer itself adds to the model's root module (a training without our callback)."""
    def train(model: Any) -> None:
        with tempfile.TemporaryDirectory() as out:
            CapturingTrainer(model=model, args=arguments(out, max_steps=1),
                             train_dataset=Tokens(classify=make_model is bert)).train()
    return added_by(train, make_model)


MODELS = [pytest.param(gpt2, False, id="gpt2"), pytest.param(bert, True, id="bert")]


def norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))


def check_layers(store: dx.RunStore, run_id: str, grads: dict[int, dict[str, torch.Tensor]], capture: Capture) -> None:
    """Every layer row's weight/bias gradient norm and update ratio equal the float64 copies of the same step.

    A row's weight columns are over its module's own parameters not named ``bias*``; a tied weight (GPT-2's
    lm_head) belongs to its first owner, so the other row has none.
    """
    frame = store.frame(run_id, join_steps=False)
    checked = 0
    for row in frame.itertuples():
        step = grads[row.step]
        own = {n: g for n, g in step.items() if n.rpartition(".")[0] == row.layer}
        weights = sorted(n for n in own if not n.rpartition(".")[2].startswith("bias"))
        biases = sorted(n for n in own if n.rpartition(".")[2].startswith("bias"))
        if not weights:
            assert math.isnan(row.weight_grad_norm)
            continue
        assert row.weight_grad_norm == pytest.approx(norm([own[n] for n in weights]), rel=1e-4)
        if biases:
            assert row.bias_grad_norm == pytest.approx(norm([own[n] for n in biases]), rel=1e-4)
        before, after = capture.before[row.step], capture.after[row.step]
        delta = norm([after[n] - before[n] for n in weights]) / norm([before[n] for n in weights])
        assert row.update_ratio == pytest.approx(delta, rel=1e-4)
        checked += 1
    assert checked >= 10 * len(grads)


@pytest.mark.parametrize("make_model, classify", MODELS)
def test_attach_records_before_clipping_what_the_trainer_logs(make_model, classify, store, tmp_path) -> None:
    model, capture = make_model(), Capture()
    clean = hook_state(model)
    trainer = CapturingTrainer(model=model, args=arguments(str(tmp_path / "out"), eval_strategy="steps", eval_steps=2),
                               train_dataset=Tokens(classify=classify), eval_dataset=Tokens(8, classify=classify),
                               callbacks=[capture])
    callback = GradientFlowCallback(store=store, run_name="tiny").attach(trainer)
    assert callback.attach(trainer) is callback                                # attaching twice changes nothing
    trainer.train()

    assert trainer.callback_handler.callbacks.count(callback) == 1
    meta = store.meta(callback.run_id)
    assert (meta["status"], meta["framework"], meta["gradients"]) == ("finished", "transformers", "before clipping")
    steps = store.step_frame(callback.run_id)
    logs = logged(trainer)
    assert steps["step"].tolist() == sorted(logs) == sorted(trainer.pre_clip) == [0, 1, 2, 3]
    for row in steps.itertuples():
        log = logs[row.step]
        assert row.grad_norm_total == pytest.approx(log["grad_norm"], rel=1e-4)     # the Trainer's pre-clip norm
        assert row.grad_norm_total == pytest.approx(norm(list(trainer.pre_clip[row.step].values())), rel=1e-4)
        assert row.grad_norm_total > 3 * MAX_GRAD_NORM
        assert norm(list(capture.post_clip[row.step].values())) == pytest.approx(MAX_GRAD_NORM, rel=1e-3)
        assert row.loss == pytest.approx(log["loss"], rel=1e-4)
        assert row.lr == capture.lr[row.step]
        assert row.epoch == pytest.approx(log["epoch"])
    assert len(trainer.micro_losses[0]) == 2                                   # gradient_accumulation_steps=2
    assert set(store.frame(callback.run_id, join_steps=False)["calls"]) <= {0, 2}      # evaluation adds none
    assert any("eval_loss" in entry for entry in trainer.state.log_history)
    trainer.predict(Tokens(8, classify=classify))
    assert len(store.runs()) == 1 and len(store.step_frame(callback.run_id)) == 4
    check_layers(store, callback.run_id, trainer.pre_clip, capture)
    check_untouched(model, clean, trainer_attributes(make_model))


def test_callbacks_alone_record_after_clipping_and_say_so(store, tmp_path) -> None:
    model, capture = bert(), Capture()
    clean = hook_state(model)
    callback = GradientFlowCallback(store=store)
    trainer = CapturingTrainer(model=model, args=arguments(str(tmp_path / "out")), train_dataset=Tokens(classify=True),
                               callbacks=[capture, callback])
    with pytest.warns(RuntimeWarning, match="records the gradients after clipping"):
        trainer.train()

    meta = store.meta(callback.run_id)
    assert (meta["status"], meta["gradients"], meta["attached"]) == ("finished", "after clipping", False)
    steps = store.step_frame(callback.run_id)
    logs = logged(trainer)
    assert steps["step"].tolist() == [0, 1, 2, 3]
    for row in steps.itertuples():
        assert row.grad_norm_total == pytest.approx(MAX_GRAD_NORM, rel=1e-3)       # clipped ...
        assert logs[row.step]["grad_norm"] > 3 * MAX_GRAD_NORM                   # ... from what the Trainer logs
        assert row.loss == pytest.approx(logs[row.step]["loss"], rel=1e-4)      # from the Trainer's own log
    check_layers(store, callback.run_id, capture.post_clip, capture)
    check_untouched(model, clean, trainer_attributes(bert))


def test_attach_without_clipping_records_every_other_step(store, tmp_path) -> None:
    model = gpt2()
    trainer = CapturingTrainer(model=model, args=arguments(str(tmp_path / "out"), max_grad_norm=0.0),
                               train_dataset=Tokens())
    callback = GradientFlowCallback(store=store, every=2).attach(trainer)
    trainer.train()
    assert store.meta(callback.run_id)["gradients"] == "before clipping"      # nothing was clipped
    steps = store.step_frame(callback.run_id)
    logs = logged(trainer)
    assert steps["step"].tolist() == [0, 2]
    for row in steps.itertuples():
        assert row.grad_norm_total == pytest.approx(logs[row.step]["grad_norm"], rel=1e-4)
        assert row.loss == pytest.approx(logs[row.step]["loss"], rel=1e-4)


def test_resumed_training_numbers_steps_by_the_global_step(store, tmp_path) -> None:
    first = CapturingTrainer(model=gpt2(), args=arguments(str(tmp_path / "out"), max_steps=2, save_strategy="steps",
                                                          save_steps=2), train_dataset=Tokens())
    GradientFlowCallback(store=store).attach(first)
    first.train()
    resumed = CapturingTrainer(model=gpt2(), args=arguments(str(tmp_path / "out")), train_dataset=Tokens())
    callback = GradientFlowCallback(store=store).attach(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    steps = store.step_frame(callback.run_id)
    assert steps["step"].tolist() == [2, 3]
    assert steps["loss"].tolist() == pytest.approx([logged(resumed)[s]["loss"] for s in (2, 3)], rel=1e-4)


def test_exception_mid_training_marks_the_run_crashed(store, tmp_path) -> None:
    model = gpt2()
    clean = hook_state(model)
    trainer = CapturingTrainer(model=model, args=arguments(str(tmp_path / "out")), train_dataset=Tokens(),
                               fail_at=(2, 1))                    # the second micro-batch of step 2, in user code
    callback = GradientFlowCallback(store=store).attach(trainer)
    with pytest.raises(ValueError, match="user error at step 2"):
        trainer.train()
    meta = store.meta(callback.run_id)
    assert (meta["status"], meta["error"]) == ("crashed", "ValueError: user error at step 2")
    assert store.step_frame(callback.run_id)["step"].tolist() == [0, 1]
    check_untouched(model, clean, trainer_attributes(gpt2))
    with dx.GradientMonitor(model) as mon:                        # the model takes a new monitor
        model(input_ids=torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long)).loss.backward()
        mon.step()


def test_without_attach_a_crash_is_marked_when_the_callback_trains_again(store, tmp_path) -> None:
    model = gpt2()
    clean = hook_state(model)
    callback = GradientFlowCallback(store=store)
    trainer = CapturingTrainer(model=model, args=arguments(str(tmp_path / "out"), max_grad_norm=0.0),
                               train_dataset=Tokens(), callbacks=[callback], fail_at=(1, 0))
    with pytest.raises(ValueError, match="user error at step 1"):
        trainer.train()
    crashed = callback.run_id
    assert store.meta(crashed)["status"] == "running"             # a TrainerCallback never sees the exception
    assert store.meta(crashed)["gradients"] == "before clipping"   # max_grad_norm=0: nothing is clipped
    trainer.fail_at = None
    trainer.train()
    assert store.meta(crashed)["status"] == "crashed"
    assert "without on_train_end" in store.meta(crashed)["error"]
    assert store.meta(callback.run_id)["status"] == "finished"
    check_untouched(model, clean, trainer_attributes(gpt2))


@pytest.mark.parametrize("args, environ, match", [
    pytest.param({"deepspeed": "ds_config.json"}, {}, "does not support DeepSpeed", id="deepspeed"),
    pytest.param({"fsdp": "full_shard"}, {}, "does not support FSDP", id="fsdp"),
    pytest.param({}, {"ACCELERATE_USE_FSDP": "true"}, "does not support FSDP", id="accelerate-fsdp"),
    pytest.param({"n_gpu": 2, "world_size": 1}, {}, "nn.DataParallel", id="data-parallel"),
])
def test_unsupported_strategies_are_refused(args, environ, match, monkeypatch) -> None:
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(dx.MonitorError, match=match):
        _refuse_unsupported(SimpleNamespace(**args))


def test_options_are_checked_when_the_callback_is_made() -> None:
    with pytest.raises(dx.MonitorError, match="the optimizer is the trainer's"):
        GradientFlowCallback(store="runs", optimizer=None)


def test_torchrun_two_processes_write_one_run_of_the_global_batch(tmp_path) -> None:
    run_script("hf_ddp.py", str(tmp_path / "runs"), str(tmp_path), torchrun=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    store = dx.RunStore(tmp_path / "runs")
    assert store.runs()["run"].tolist() == [ranks[0]["run_id"]] == [ranks[1]["run_id"]]    # one run, one id
    run_id = ranks[0]["run_id"]
    assert (store.meta(run_id)["status"], store.meta(run_id)["world_size"]) == ("finished", 2)
    steps = store.step_frame(run_id)
    logs = ranks[0]["logs"]                        # the Trainer gathers and averages the loss over processes
    assert steps["step"].tolist() == sorted(logs) == [0, 1, 2, 3]
    for row in steps.itertuples():
        assert row.loss == pytest.approx(logs[row.step]["loss"], rel=1e-4)
        assert row.grad_norm_total == pytest.approx(logs[row.step]["grad_norm"], rel=1e-4)
        assert row.grad_norm_total > 3 * MAX_GRAD_NORM
        for rank in ranks:                         # after DDP's all-reduce both ranks hold the global gradient
            assert row.grad_norm_total == pytest.approx(norm(list(rank["pre_clip"][row.step].values())), rel=1e-4)
    check_layers(store, run_id, ranks[0]["pre_clip"], SimpleNamespace(before=ranks[0]["before"],
                                                                       after=ranks[0]["after"]))
    assert not ranks[0]["hooks_left"] and not ranks[1]["hooks_left"]
