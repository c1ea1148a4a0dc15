"""Depth sweeps and labelled variants of compare(): the keys, what each run records, determinism."""

from __future__ import annotations

import pandas as pd
import pytest

import diagnostics as dx
from diagnostics.experiments.comparison import comparison_runs, comparisons
from diagnostics.experiments.training import TrainingError

#: A tiny sweep: synthetic 6x6 images, 3 steps, one process.
TINY = {"steps": 3, "dataset": "synthetic", "width": 4, "batch_size": 16, "eval_every": 2,
        "data_options": {"n": 64, "size": 6}, "workers": 1, "seed": 1}
COLUMNS = ["step", "layer", "loss", "weight_grad_norm", "act_grad_norm"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    store = dx.RunStore(tmp_path_factory.mktemp("sweep"))
    updates = []
    runs = dx.compare(variants=["plain", "residual"], depth=[2, 3], store=store, progress=updates.append, **TINY)
    return store, runs, updates


def test_a_depth_sweep_is_keyed_by_variant_and_depth(sweep):
    store, runs, _ = sweep
    assert list(runs) == [("plain", 2), ("plain", 3), ("residual", 2), ("residual", 3)]
    for (variant, depth), run in runs.items():
        meta = store.meta(run)
        assert meta["config"]["depth"] == depth and meta["series"] == variant
        assert meta["variant"] == f"{variant} d{depth}"
    assert len({store.meta(r)["group"] for r in runs.values()}) == 1


def test_each_run_of_a_sweep_reports_progress_and_records_block_gains(sweep):
    store, runs, updates = sweep
    assert {u.variant for u in updates if u.done} == {"plain d2", "plain d3", "residual d2", "residual d3"}
    blocks = store.block_frame(runs[("residual", 3)])
    assert sorted(blocks["block"].unique()) == ["blocks.0", "blocks.1", "blocks.2"]
    assert blocks[blocks["block"] == "blocks.0"]["gain"].isna().all()      # fed by the data: no gain
    assert (blocks[blocks["block"] != "blocks.0"]["gain"] > 0).all()


def test_the_comparison_lists_every_depth_and_run(sweep):
    store, runs, _ = sweep
    group = store.meta(runs[("plain", 2)])["group"]
    row = comparisons(store).set_index("group").loc[group]
    assert row["runs"] == 4 and row["depth"] == "2, 3" and row["variants"] == "plain, residual"
    assert set(comparison_runs(store, group).values()) == set(runs.values())


def test_a_sweep_run_is_the_same_run_as_a_single_depth_comparison(sweep, tmp_path):
    store, runs, _ = sweep
    single = dx.compare(variants=["plain"], depth=3, store=dx.RunStore(tmp_path), **TINY)
    assert list(single) == ["plain"]
    pd.testing.assert_frame_equal(store.frame(runs[("plain", 3)])[COLUMNS],
                                  dx.RunStore(tmp_path).frame(single["plain"])[COLUMNS])


def test_the_same_sweep_twice_gives_the_same_numbers(sweep, tmp_path):
    store, runs, _ = sweep
    again = dx.compare(variants=["plain", "residual"], depth=[2, 3], store=dx.RunStore(tmp_path), **TINY)
    assert list(again) == list(runs)
    for key in runs:
        pd.testing.assert_frame_equal(store.frame(runs[key])[COLUMNS], dx.RunStore(tmp_path).frame(again[key])[COLUMNS])


def test_labelled_variants_compare_other_settings(tmp_path):
    store = dx.RunStore(tmp_path)
    runs = dx.compare(variants={"xavier": {"variant": "plain", "init": "xavier"},
                                "he": {"variant": "plain", "init": "he"}}, depth=2, store=store, **TINY)
    assert list(runs) == ["xavier", "he"]
    assert [store.meta(r)["config"]["init"] for r in runs.values()] == ["xavier", "he"]


@pytest.mark.parametrize("depth", [[], [2, 2], [2, "3"]], ids=["empty", "twice", "not-int"])
def test_bad_depths_are_errors_before_any_training(tmp_path, depth):
    with pytest.raises(TrainingError, match="depth must be an integer or a list of distinct integers"):
        dx.compare(variants=["plain"], depth=depth, store=dx.RunStore(tmp_path), **TINY)
    assert not list(tmp_path.iterdir())


def test_the_cli_runs_a_depth_sweep_and_prints_a_row_per_run(tmp_path, capsys):
    from diagnostics.cli import main

    code = main(["compare", "--variants", "plain", "--depth", "2,3", "--steps", "2", "--dataset", "synthetic",
                 "--width", "4", "--batch-size", "16", "--store", str(tmp_path), "--quiet"])
    assert code == 0
    rows = capsys.readouterr().out.splitlines()[-2:]
    assert [" ".join(r.split()[:2]) for r in rows] == ["plain d2", "plain d3"]
    assert main(["compare", "--depth", "2,x", "--store", str(tmp_path), "--quiet"]) == 2
    assert "--depth must be an integer" in capsys.readouterr().err
