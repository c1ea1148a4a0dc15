"""GradientFlowCallback under real Lightning Trainers (both packages) on CPU, checked against float64 copies of
the gradients taken independently at the same point of the step."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch

import diagnostics as dx
from tests.conftest import hook_state
from tests.integrations.launch import run_script
from tests.integrations.untouched import added_by, check_untouched
from tests.integrations.lightning_setup import data, load, make_capture, make_module

pytest.importorskip("lightning")
pytest.importorskip("pytorch_lightning")

from diagnostics.integrations.lightning import GradientFlowCallback  # noqa: E402

PACKAGES = [pytest.param("lightning.pytorch", id="lightning"),
            pytest.param("pytorch_lightning", id="pytorch_lightning")]
CLIP = 0.05          # well below every pre-clip norm of the tiny CNN, so clipping acts on every step


def fit(package: str, callbacks: list[Any], module: Any, **trainer_args: Any) -> Any:
    pl = load(package)
    args = dict(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2, num_sanity_val_steps=1)
    trainer = pl.Trainer(callbacks=callbacks, **{**args, **trainer_args})
    trainer.fit(module, data(), data(8))
    return trainer


@functools.cache
def lightning_attributes(package: str) -> set[str]:
    """What Lightning itself adds to a LightningModule during fit (a fit without our callback)."""
    return added_by(lambda module: fit(package, [], module, max_epochs=1, limit_train_batches=2),
                    lambda: make_module(package))


def norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))


def check_layers(store: dx.RunStore, run_id: str, capture: Any) -> None:
    """Per-layer weight/bias gradient norms and update ratios equal the float64 copies of the same step."""
    frame = store.frame(run_id, join_steps=False)
    checked = 0
    for row in frame.itertuples():
        grads = capture.grads[row.step]
        if f"{row.layer}.weight" not in grads:
            assert math.isnan(row.weight_grad_norm)                      # ReLU, pooling: no parameters
            continue
        before, after = capture.before[row.step], capture.after[row.step]
        w = f"{row.layer}.weight"
        assert row.weight_grad_norm == pytest.approx(norm([grads[w]]), rel=1e-4)
        assert row.bias_grad_norm == pytest.approx(norm([grads[f"{row.layer}.bias"]]), rel=1e-4)
        assert row.update_ratio == pytest.approx(norm([after[w] - before[w]]) / norm([before[w]]), rel=1e-4)
        checked += 1
    assert checked == 3 * len(capture.grads)                            # conv, conv, linear at every step


@pytest.mark.parametrize("precision", [pytest.param("32-true", id="fp32"), pytest.param("bf16-mixed", id="bf16")])
@pytest.mark.parametrize("package", PACKAGES)
def test_records_each_optimizer_step_before_clipping(package: str, precision: str, store: dx.RunStore) -> None:
    module, capture = make_module(package), make_capture(package)
    clean = hook_state(module)
    callback = GradientFlowCallback(store=store, run_name="tiny", every=1)
    trainer = fit(package, [callback, capture], module, accumulate_grad_batches=2, gradient_clip_val=CLIP,
                  precision=precision)

    assert isinstance(callback, load(package).Callback)
    meta = store.meta(callback.run_id)
    assert meta["status"] == "finished"
    assert meta["framework"] == package.split(".")[0]
    assert meta["gradients"] == "before clipping"
    assert meta["precision"] == precision
    steps = store.step_frame(callback.run_id)
    # 32 samples / batch 4 / accumulate 2 = 4 optimizer steps per epoch, numbered by the global step.
    assert steps["step"].tolist() == list(range(trainer.global_step)) == sorted(capture.grads) == list(range(8))
    for row in steps.itertuples():
        pre_clip = norm(list(capture.grads[row.step].values()))
        assert row.grad_norm_total == pytest.approx(pre_clip, rel=1e-4)
        assert row.grad_norm_total > 3 * CLIP                             # recorded before clipping ...
        assert capture.clipped_norm[row.step] == pytest.approx(CLIP, rel=1e-3)   # ... which then clipped
        losses = [loss for step, loss in module.losses if step == row.step]
        assert len(losses) == 2
        assert row.loss == pytest.approx(sum(losses) / 2, rel=1e-4)      # mean over the accumulated micro-batches
        assert row.lr == capture.lr[row.step] == 0.1
        assert row.epoch == capture.epoch[row.step] == row.step // 4
        assert 0.0 <= row.acc <= 1.0                                      # self.log("acc", on_step=True)
    assert "val_loss" not in steps.columns
    check_layers(store, callback.run_id, capture)
    layers = store.frame(callback.run_id, join_steps=False)
    assert set(layers["calls"]) == {2}            # two micro-batches per step; validation and sanity adds none
    trainer.validate(module, data(8))
    trainer.predict(module, data(8))
    assert len(store.runs()) == 1 and len(store.step_frame(callback.run_id)) == 8
    check_untouched(module, clean, lightning_attributes(package))


def test_a_shorter_last_accumulation_window_averages_its_own_losses(store: dx.RunStore) -> None:
    package = "lightning.pytorch"
    module = make_module(package)
    callback = GradientFlowCallback(store=store)
    fit(package, [callback], module, max_epochs=1, accumulate_grad_batches=3)     # 8 batches: 3 + 3 + 2
    steps = store.step_frame(callback.run_id)
    assert steps["step"].tolist() == [0, 1, 2]
    for row in steps.itertuples():
        losses = [loss for step, loss in module.losses if step == row.step]
        assert len(losses) == (2 if row.step == 2 else 3)
        assert row.loss == pytest.approx(sum(losses) / len(losses), rel=1e-4)


def test_exception_in_training_step_marks_the_run_crashed(store: dx.RunStore) -> None:
    package = "lightning.pytorch"
    module = make_module(package, fail_at_step=3)
    clean = hook_state(module)
    callback = GradientFlowCallback(store=store)
    with pytest.raises(ValueError, match="user error at step 3"):
        fit(package, [callback], module, accumulate_grad_batches=2)
    meta = store.meta(callback.run_id)
    assert meta["status"] == "crashed"
    assert meta["error"] == "ValueError: user error at step 3"
    assert store.step_frame(callback.run_id)["step"].tolist() == [0, 1, 2]
    check_untouched(module, clean, lightning_attributes(package))
    with dx.GradientMonitor(module) as mon:                              # the model takes a new monitor
        module(torch.randn(2, 1, 8, 8)).sum().backward()
        mon.step()


def test_resumed_fit_numbers_steps_by_the_global_step(store: dx.RunStore, tmp_path) -> None:
    package = "lightning.pytorch"
    module = make_module(package)
    first = GradientFlowCallback(store=store)
    trainer = fit(package, [first], module, max_epochs=1, accumulate_grad_batches=2)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    second = GradientFlowCallback(store=store)
    pl = load(package)
    resumed = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, accumulate_grad_batches=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[second])
    resumed.fit(make_module(package), data(), ckpt_path=tmp_path / "epoch1.ckpt")
    assert store.step_frame(first.run_id)["step"].tolist() == [0, 1, 2, 3]
    assert store.step_frame(second.run_id)["step"].tolist() == [4, 5, 6, 7]
    assert store.step_frame(second.run_id)["epoch"].tolist() == [1, 1, 1, 1]


def test_manual_optimisation_is_refused(store: dx.RunStore) -> None:
    package = "lightning.pytorch"
    module = make_module(package, manual=True)
    clean = hook_state(module)
    with pytest.raises(dx.MonitorError, match="automatic optimisation only"):
        fit(package, [GradientFlowCallback(store=store)], module)
    assert store.runs().empty
    check_untouched(module, clean, lightning_attributes(package))


def test_fsdp_strategy_is_refused() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    from diagnostics.integrations.lightning import _check_strategy

    with pytest.raises(dx.MonitorError, match="does not support FSDPStrategy"):
        _check_strategy(FSDPStrategy())


@pytest.mark.parametrize("option, match", [
    pytest.param({"optimizer": None}, "optimizer is the trainer's", id="framework-argument"),
    pytest.param({"evry": 2}, "unknown option evry", id="unknown"),
    pytest.param({"every": 0}, "every must be", id="bad-value"),
])
def test_options_are_checked_when_the_callback_is_made(option: dict[str, Any], match: str) -> None:
    with pytest.raises(dx.MonitorError, match=match):
        GradientFlowCallback(store="runs", **option)


def test_ddp_two_processes_write_one_run_of_the_global_batch(tmp_path) -> None:
    run_script("lightning_ddp.py", str(tmp_path / "runs"), str(tmp_path), "lightning.pytorch")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    store = dx.RunStore(tmp_path / "runs")
    assert store.runs()["run"].tolist() == [ranks[0]["run_id"]] == [ranks[1]["run_id"]]    # one run, one id
    run_id = ranks[0]["run_id"]
    meta = store.meta(run_id)
    assert (meta["status"], meta["world_size"], meta["strategy"]) == ("finished", 2, "DDPStrategy")
    steps = store.step_frame(run_id)
    layers = store.frame(run_id, join_steps=False)
    # 32 samples over 2 ranks, batch 4, accumulate 2: 2 optimizer steps per epoch, 2 epochs.
    assert steps["step"].tolist() == list(range(ranks[0]["global_step"])) == [0, 1, 2, 3]
    for row in steps.itertuples():
        for rank in ranks:                          # DDP's all-reduce gave both ranks the global-batch gradient
            assert row.grad_norm_total == pytest.approx(norm(list(rank["grads"][row.step].values())), rel=1e-4)
        assert row.grad_norm_total > 3 * CLIP
        losses = [loss for rank in ranks for step, loss in rank["losses"] if step == row.step]
        assert len(losses) == 4
        assert row.loss == pytest.approx(sum(losses) / 4, rel=1e-4)      # the global batch's mean loss
        sums = [(total, count) for rank in ranks for step, total, count in rank["logit_sums"] if step == row.step]
        head = layers[(layers["step"] == row.step) & (layers["layer"] == "head")]
        assert head["act_mean"].item() == pytest.approx(sum(s for s, _ in sums) / sum(n for _, n in sums), rel=1e-4)

    class Capture:
        grads, before, after = ranks[0]["grads"], ranks[0]["before"], ranks[0]["after"]

    check_layers(store, run_id, Capture)
    assert not ranks[0]["hooks_left"] and not ranks[1]["hooks_left"]
