"""Block gains, depth sweeps and the init reading of the views, on hand-made tables with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from diagnostics.experiments.comparison import ComparisonData
from diagnostics.views.gains import cumulative_figure, gain_figure, gain_profile, gain_profiles, missing_note
from diagnostics.views.sweep import init_reading, is_sweep, run_ratios, sweep_figure
from diagnostics.views.training_comparison import compare_view


def blocks_table(gains: list[float], steps: tuple[int, ...] = (0, 5)) -> pd.DataFrame:
    """A blocks table (RunStore.block_frame's columns) with the same gains at every step, rows shuffled."""
    rows = [{"run": "r", "step": s, "block": f"blocks.{i}", "type": "ConvBlock", "depth": 3 * i, "calls": 1,
             "residual": i > 0, "in_grad_norm": math.nan, "out_grad_norm": 1.0, "gain": g, "branch_share": 0.5}
            for s in steps for i, g in enumerate(gains)]
    return pd.DataFrame(rows[::-1])


def test_cumulative_gain_is_the_product_from_the_last_block_back():
    profile = gain_profile(blocks_table([math.nan, 0.5, 0.25, 2.0]), "r", 0)
    assert profile["block"].tolist() == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]   # execution order
    np.testing.assert_allclose(profile["cumulative"], [math.nan, 0.25, 0.5, 2.0])
    assert profile["index"].tolist() == [0, 1, 2, 3]


def test_profiles_default_to_the_first_and_last_step_and_snap_to_recorded_steps():
    frames = {"a": blocks_table([math.nan, 1.0]), "old": pd.DataFrame()}
    assert [int(p["step"].iloc[0]) for p in gain_profiles(frames)] == [0, 5]
    assert [int(p["step"].iloc[0]) for p in gain_profiles(frames, [4, 5])] == [5]


def test_gain_figures_draw_a_line_per_run_and_step_on_log_axes():
    profiles = gain_profiles({"a": blocks_table([math.nan, 0.5, 0.5])})
    for fig in (gain_figure(profiles, {}, {"a": "plain"}), cumulative_figure(profiles, {}, {})):
        assert len(fig.data) == 2 and fig.layout.yaxis.type == "log"
        assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
        assert list(fig.data[0].x) == [1, 2]                      # the block without a gain is left out
    assert gain_figure(profiles, {}, {"a": "plain"}).data[0].name == "plain · step 0"


def test_the_note_names_runs_without_block_gains():
    assert missing_note([], {}) is None
    note = missing_note(["r1"], {"r1": "old run"})
    assert "old run" in note and 'blocks="auto"' in note


def comparison(depths: dict[str, tuple[str, int, str]], ratios: dict[str, tuple[float, float]]) -> ComparisonData:
    """Runs ``{label: (series, depth, init)}``; two conv layers per run with output-gradient norms such that
    first/last = ``ratios[label]`` at steps 0 and 1, weight-gradient norms all 1."""
    layers, steps, meta = [], [], {}
    for label, (series, depth, init) in depths.items():
        meta[label] = {"series": series, "config": {"depth": depth, "init": init, "activation": "relu"}}
        for step, ratio in enumerate(ratios[label]):
            layers += [{"variant": label, "step": step, "layer": "c1", "conv_index": 1, "act_grad_norm": ratio,
                        "weight_grad_norm": 1.0, "type": "Conv2d", "depth": 0},
                       {"variant": label, "step": step, "layer": "c2", "conv_index": 2, "act_grad_norm": 1.0,
                        "weight_grad_norm": 1.0, "type": "Conv2d", "depth": 1}]
            steps.append({"variant": label, "step": step, "loss": 2.0, "accuracy": 0.5 if step else math.nan})
    return ComparisonData({k: f"run-{k}" for k in depths}, pd.DataFrame(steps), pd.DataFrame(layers), meta)


def test_a_sweep_reads_the_ratio_at_step_0_and_at_the_end_per_depth():
    data = comparison({"plain d5": ("plain", 5, "default"), "plain d10": ("plain", 10, "default")},
                      {"plain d5": (1e-2, 1e-3), "plain d10": (1e-5, 1e-6)})
    ratios = run_ratios(data)
    assert is_sweep(ratios)
    assert ratios[["depth", "out_ratio_start", "out_ratio_end", "accuracy"]].values.tolist() == \
        [[5, 1e-2, 1e-3, 0.5], [10, 1e-5, 1e-6, 0.5]]
    fig = sweep_figure(ratios)
    assert [t.name for t in fig.data] == ["plain · step 0", "plain · end", "plain"]
    assert list(fig.data[0].x) == [5, 10] and list(fig.data[2].y) == [50.0, 50.0]
    assert "sweep" in compare_view(data).figures and "gain" not in compare_view(data).figures


def test_the_init_reading_compares_xavier_and_he_with_the_predicted_factor():
    data = comparison({"xavier": ("xavier", 30, "xavier"), "he": ("he", 30, "he")},
                      {"xavier": (1.5e-5, 1e-3), "he": (0.3, 0.3)})
    ratios = run_ratios(data)
    assert not is_sweep(ratios)
    text = init_reading(ratios)
    assert "1.5e-05 under Xavier and 0.3 under He, a factor 5.0e-05" in text
    assert "(1/√2)^29 ≈ 4.3e-05" in text and "*weight*-gradient ratio hides this" in text
    view = compare_view(data)
    assert view.notes[0] == text and "No backward gain per block" in view.notes[1]


def test_no_init_reading_without_a_xavier_and_a_he_run():
    data = comparison({"a": ("a", 30, "he"), "b": ("b", 30, "default")}, {"a": (1.0, 1.0), "b": (1.0, 1.0)})
    assert init_reading(run_ratios(data)) is None
