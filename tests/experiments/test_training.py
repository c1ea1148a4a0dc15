"""compare(): physics at a small scale, determinism, divergence, DDP (spawned and torchrun), CLI, the reading."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import diagnostics as dx
from diagnostics.cli import main
from diagnostics.experiments.comparison import comparison_runs, comparisons, load_comparison
from diagnostics.views.training_comparison import compare_view, describe, ratio_frame, summarize
from diagnostics.views.figures import PALETTE
from diagnostics.checkpoints.architecture import load_project_checkpoint
from diagnostics.experiments.models import VARIANTS
from diagnostics.experiments.launch import resolve_workers
from diagnostics.experiments.jobs import ComparisonJob
from diagnostics.experiments.syncbn import SyncBatchNormCPU
from diagnostics.experiments.training import CHECKPOINT_FILE, TrainingError, batch_indices, flush_denormals

ROOT = Path(__file__).resolve().parents[2]
#: A tiny comparison: 2 variants, 4 conv layers, synthetic 6x6 images (fast enough for every test).
TINY = {"depth": 4, "steps": 6, "dataset": "synthetic", "width": 4, "batch_size": 16, "eval_every": 2,
        "data_options": {"n": 96, "size": 6}, "workers": 1}
LAYER_STATS = ["weight_grad_norm", "weight_grad_max_abs", "bias_grad_norm", "act_grad_norm", "act_grad_max_abs",
               "act_mean", "act_std", "act_zero_frac", "update_ratio"]


def denormals_flushed() -> bool:
    return bool((torch.tensor([1e-38]) / 100.0).item() == 0.0)


# --- the physics, at a small scale ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def physics(tmp_path_factory):
    """All four variants at depth 12 on the real digits (width 8, 40 steps): the issue's claim, scaled down."""
    store = dx.RunStore(tmp_path_factory.mktemp("physics") / "runs")
    updates = []
    runs = dx.compare(variants=list(VARIANTS), depth=12, steps=40, dataset="digits", seed=0, store=store,
                      width=8, eval_every=20, workers=1, progress=updates.append)
    data = load_comparison(store, runs)
    return store, runs, data, summarize(data).set_index("variant"), updates


def test_plain_network_gradient_vanishes_toward_the_input_and_it_does_not_learn(physics):
    _, _, _, summary, _ = physics
    plain = summary.loc["plain"]
    assert plain["ratio_median"] < 1e-3                         # >= 3 orders of magnitude at depth 12
    assert plain["accuracy"] < 0.25                             # chance is 10%


@pytest.mark.parametrize("variant", ["batchnorm", "residual", "residual+batchnorm"],
                         ids=["batchnorm", "residual", "residual+batchnorm"])
def test_batchnorm_and_residual_keep_gradients_comparable_and_learn(physics, variant):
    _, _, data, summary, _ = physics
    ratios = ratio_frame(data)
    ratios = ratios[ratios["variant"] == variant]["ratio"]
    assert ratios.between(0.01, 100).all(), ratios.describe()
    assert summary.loc[variant, "accuracy"] > 0.5


def test_ratio_uses_first_and_last_conv_layers_in_execution_order(physics):
    store, runs, data, summary, _ = physics
    frame = store.frame(runs["plain"], steps=5)
    convs = frame[frame["type"] == "Conv2d"].sort_values("depth")
    assert list(convs["layer"].iloc[[0, -1]]) == ["blocks.0.conv", "blocks.11.conv"]
    expected = convs["weight_grad_norm"].iloc[0] / convs["weight_grad_norm"].iloc[-1]
    ratio = ratio_frame(data).query("variant == 'plain' and step == 5")["ratio"].item()
    assert ratio == pytest.approx(expected, rel=1e-12)


def test_runs_share_a_group_one_optimiser_and_record_everything(physics):
    store, runs, data, _, _ = physics
    metas = [store.meta(r) for r in runs.values()]
    assert len({m["group"] for m in metas}) == 1 and [m["variant"] for m in metas] == list(VARIANTS)
    assert all(m["train"] == metas[0]["train"] for m in metas) and metas[0]["train"]["lr"] == 0.01
    assert all(m["status"] == "finished" and m["steps"] == 40 for m in metas)
    steps = data.steps[data.steps["variant"] == "plain"]
    assert steps.dropna(subset=["accuracy"])["step"].tolist() == [0, 20, 39]     # every K steps and the last
    assert steps["train_accuracy"].notna().all() and steps["loss"].notna().all()
    assert metas[0]["kernel_layers"] == ["blocks.0.conv", "blocks.6.conv", "blocks.11.conv"]
    assert store.kernel_steps(runs["plain"]) == [0]
    assert comparison_runs(store, metas[0]["group"]) == runs
    listed = comparisons(store)
    assert listed["group"].tolist() == [metas[0]["group"]] and listed["runs"].item() == 4


def test_progress_reports_every_step_of_every_variant(physics):
    _, runs, _, _, updates = physics
    for index, variant in enumerate(VARIANTS):
        mine = [u for u in updates if u.variant == variant]
        assert [u.step for u in mine if not u.done] == list(range(1, 41))
        assert mine[-1].done and mine[-1].run_id == runs[variant] and mine[-1].index == index


def test_each_run_keeps_a_checkpoint_that_rebuilds_its_network(physics):
    store, runs, _, _, _ = physics
    loaded = load_project_checkpoint(store.root / runs["residual"] / CHECKPOINT_FILE)
    assert loaded.config.to_dict() == store.meta(runs["residual"])["config"]
    assert loaded.extra["step"] == 40 and loaded.extra["variant"] == "residual"


def test_reading_and_figures_of_a_real_comparison(physics):
    _, _, data, summary, _ = physics
    text = describe(summary.reset_index())
    assert "**plain**" in text and "orders of magnitude smaller" in text and "near chance" in text
    assert "kept the first/last gradient ratio within 0.01–100" in text
    fig = compare_view(data, steps=[0, 39]).figures["depth"]
    assert len(fig.data) == 8 and fig.layout.yaxis.type == "log"
    assert {t.line.color for t in fig.data} <= set(PALETTE)


# --- determinism, divergence, settings -------------------------------------------------------------------------

def test_the_same_call_twice_gives_the_same_numbers(tmp_path):
    store = dx.RunStore(tmp_path)
    first = dx.compare(variants=["plain", "residual+batchnorm"], seed=3, store=store, **TINY)
    second = dx.compare(variants=["plain", "residual+batchnorm"], seed=3, store=store, **TINY)
    for variant in first:
        a, b = store.frame(first[variant]), store.frame(second[variant])
        pd.testing.assert_frame_equal(a[["step", "layer", *LAYER_STATS, "loss", "accuracy"]],
                                      b[["step", "layer", *LAYER_STATS, "loss", "accuracy"]])
    assert store.meta(first["plain"])["group"] != store.meta(second["plain"])["group"]


def test_same_seed_same_data_order():
    assert torch.equal(batch_indices(100, 16, 20, seed=1), batch_indices(100, 16, 20, seed=1))
    order = batch_indices(100, 16, 20, seed=1)                       # (steps, batch)
    assert order.shape == (20, 16) and len(set(order[:6].flatten().tolist())) == 96   # no repeat within an epoch
    assert not torch.equal(order, batch_indices(100, 16, 20, seed=2))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_is_kept_and_flagged_where_it_started(tmp_path):
    store = dx.RunStore(tmp_path)
    runs = dx.compare(variants=["plain"], store=store, **{**TINY, "lr": 1e6, "steps": 10})
    meta = store.meta(runs["plain"])
    assert meta["status"] == "finished" and meta["tags"] == ["diverged"]
    where = meta["first_nonfinite"]
    steps = store.step_frame(runs["plain"])
    assert steps["step"].max() == where["step"] < 9                  # stopped at the step where it began
    assert where["forward"] or where["backward"]
    summary = summarize(load_comparison(store, runs))
    assert summary["diverged_step"].item() == where["step"]
    assert f"diverged at step {where['step']}" in describe(summary)


def test_flush_denormals_is_restored():
    assert not denormals_flushed()
    with flush_denormals():
        assert denormals_flushed()
    assert not denormals_flushed()


@pytest.mark.parametrize("options,message", [
    ({"variants": ["plain", "resnet"]}, r"unknown variant\(s\) \['resnet'\]"),
    ({"variants": []}, "choose at least one variant"),
    ({"variants": ["plain", "plain"]}, "each variant may appear once"),
    ({"lr": 0.0}, "lr must be a positive number"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"nproc": 3}, "batch_size=16 must be divisible by nproc=3"),
    ({"workers": 0}, "workers must be a positive integer or 'auto'"),
], ids=["unknown-variant", "no-variant", "twice", "lr", "optimizer", "nproc", "workers"])
def test_bad_settings_are_errors_before_any_training(tmp_path, options, message):
    with pytest.raises(TrainingError, match=message):
        dx.compare(store=dx.RunStore(tmp_path), **{**TINY, "variants": ["plain"], **options})
    assert not (tmp_path / "runs").exists() and not list(tmp_path.iterdir())


def test_auto_workers_only_for_long_comparisons():
    assert resolve_workers("auto", 4, 6) == 1
    assert resolve_workers("auto", 4, 300) == min(4, os.cpu_count())
    assert resolve_workers(8, 2, 300) == 2


def test_variants_trained_in_parallel_processes_match_one_process(tmp_path):
    store = dx.RunStore(tmp_path)
    updates = []
    serial = dx.compare(variants=["plain", "batchnorm"], store=store, **TINY)
    parallel = dx.compare(variants=["plain", "batchnorm"], store=store, progress=updates.append,
                          **{**TINY, "workers": 2})
    assert list(parallel) == ["plain", "batchnorm"]
    assert {u.variant for u in updates if u.done} == {"plain", "batchnorm"}
    for variant in serial:
        a, b = store.frame(serial[variant]), store.frame(parallel[variant])
        # Only the intra-op thread count differs (1 per worker): equal up to float rounding.
        np.testing.assert_allclose(a["weight_grad_norm"], b["weight_grad_norm"], rtol=1e-4)


# --- distributed --------------------------------------------------------------------------------------------

def test_sync_batchnorm_cpu_without_a_process_group_is_batchnorm():
    reference = nn.BatchNorm2d(3)
    synced = SyncBatchNormCPU(3)
    synced.load_state_dict(reference.state_dict())
    x = torch.randn(4, 3, 5, 5, requires_grad=True)                  # (N, C, H, W)
    torch.testing.assert_close(synced(x), reference(x))
    torch.testing.assert_close(synced.running_var, reference.running_var)


def test_distributed_monitor_refuses_histograms():
    with pytest.raises(dx.MonitorError, match="histograms are not supported"):
        dx.GradientMonitor(nn.Linear(2, 2), histogram_every=1, distributed=True)
    assert dx.GradientMonitor(nn.Linear(2, 2), distributed=True).options.histogram_every == 0


def assert_same_statistics(store: dx.RunStore, single: dict[str, str], ddp: dict[str, str]) -> None:
    for variant in single:
        a, b = store.frame(single[variant]), store.frame(ddp[variant])
        assert list(a["layer"]) == list(b["layer"])
        for column in LAYER_STATS:
            # A conv bias before batch norm has an analytically zero gradient: its recorded norm (~1e-7) is
            # rounding noise, which no two summation orders share.
            atol = 1e-6 if column == "bias_grad_norm" else 1e-7
            np.testing.assert_allclose(b[column], a[column], rtol=2e-5, atol=atol, err_msg=f"{variant} {column}")
        for column in ("loss", "train_accuracy", "accuracy"):
            np.testing.assert_allclose(b[column], a[column], rtol=1e-6, err_msg=f"{variant} {column}")
        assert store.meta(ddp[variant])["world_size"] == 2


def test_two_gloo_processes_record_what_one_process_records_on_the_global_batch(tmp_path):
    store = dx.RunStore(tmp_path)
    variants = ["plain", "residual+batchnorm"]                       # batch norm synced across the processes
    single = dx.compare(variants=variants, store=store, **TINY)
    ddp = dx.compare(variants=variants, store=store, nproc=2, **TINY)
    assert_same_statistics(store, single, ddp)
    assert len(store.run_ids()) == 4                                 # only rank 0 wrote


def test_torchrun_launch_of_the_cli_records_what_one_process_records(tmp_path):
    store = dx.RunStore(tmp_path / "runs")
    args = ["compare", "--variants", "residual", "--depth", "4", "--steps", "4", "--dataset", "synthetic",
            "--width", "4", "--batch-size", "16", "--eval-every", "2", "--store", str(store.root), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "diagnostics", *args], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("Comparison cmp-") == 1               # rank 0 alone prints the summary
    (ddp_run,) = store.run_ids()
    single = dx.compare(variants=["residual"], depth=4, steps=4, dataset="synthetic", store=store, width=4,
                        batch_size=16, eval_every=2, workers=1)
    assert_same_statistics(store, single, {"residual": ddp_run})


# --- the CLI ------------------------------------------------------------------------------------------------

def test_cli_compare_prints_a_summary_table(tmp_path, capsys):
    code = main(["compare", "--variants", "plain,residual", "--depth", "4", "--steps", "4", "--dataset", "synthetic",
                 "--width", "4", "--batch-size", "16", "--store", str(tmp_path), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "final loss" in out and "accuracy" in out and "first/last grad ratio" in out
    table = out.splitlines()[-2:]
    assert table[0].split()[0] == "plain" and table[1].split()[0] == "residual"
    assert len(dx.RunStore(tmp_path).run_ids()) == 2


def test_cli_compare_bad_variant_is_an_error_message(tmp_path, capsys):
    assert main(["compare", "--variants", "plain,resnet", "--store", str(tmp_path), "--quiet"]) == 2
    assert "unknown variant(s) ['resnet']" in capsys.readouterr().err


# --- the background job (what the page uses) ----------------------------------------------------------------------

def test_comparison_job_runs_in_a_thread_and_reports_progress(tmp_path):
    job = ComparisonJob(store=str(tmp_path), variants=["plain"], **TINY).start()
    assert job.wait(timeout=60) and job.error is None
    assert job.fractions() == {"plain": 1.0} and set(job.result) == {"plain"}
    assert job.latest()["plain"].done


def test_comparison_job_reports_a_failure_instead_of_raising(tmp_path, monkeypatch):
    import diagnostics.experiments.launch as launch

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(launch, "run_job", broken)
    job = ComparisonJob(store=str(tmp_path), variants=["plain"], **TINY).start()
    assert job.wait(timeout=30)
    assert job.error == "RuntimeError: out of memory" and job.result is None
    assert isinstance(job.exception, RuntimeError)                  # not a library error: a page shows the traceback


def test_comparison_job_setting_errors_raise_before_starting(tmp_path):
    with pytest.raises(dx.DataError, match="does not exist"):
        ComparisonJob(store=str(tmp_path), dataset="folder", data_root=str(tmp_path / "none"))
    assert not list(tmp_path.iterdir())

