"""The Compare training view: summary, plain-language reading, figures and first/last conv-layer ratios."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from diagnostics.experiments.comparison import ComparisonData
from diagnostics.views.training_comparison import compare_view, describe, profile_steps


def summary_rows(*rows: dict) -> pd.DataFrame:
    base = {"run": "r", "steps": 300, "final_loss": 1.0, "diverged_step": None, "diverged_layer": None,
            "ratio_final": math.nan}
    return pd.DataFrame([{**base, **row} for row in rows])


@pytest.mark.parametrize("row,expected", [
    ({"variant": "plain", "accuracy": 0.1, "ratio_median": 3e-8},
     ["7.5 orders of magnitude smaller", "barely learned and it stayed near chance (10% held-out accuracy; chance "
      "is 10%)"]),
    ({"variant": "plain", "accuracy": 0.8, "ratio_median": 1e-3},
     ["3.0 orders of magnitude smaller", "yet it reached 80% held-out accuracy"]),
    ({"variant": "residual", "accuracy": 0.95, "ratio_median": 1.2},
     ["kept the first/last gradient ratio within 0.01–100 (median 1.2)", "and learned (95% held-out accuracy)"]),
    ({"variant": "x", "accuracy": 0.12, "ratio_median": 2.0}, ["but learned little so far"]),
    ({"variant": "tanh", "accuracy": 0.3, "ratio_median": 5e3}, ["3.7 orders of magnitude larger", "exploding"]),
    ({"variant": "lr", "accuracy": 0.1, "ratio_median": 1.0, "diverged_step": 7, "diverged_layer": "blocks.3.conv"},
     ["diverged at step 7 (first NaN/Inf in layer blocks.3.conv)"]),
    ({"variant": "new", "accuracy": math.nan, "ratio_median": math.nan}, ["no conv-layer gradients recorded yet"]),
], ids=["vanished-chance", "vanished-learned", "healthy", "healthy-slow", "exploding", "diverged", "empty-run"])
def test_describe_reads_the_numbers(row, expected):
    text = describe(summary_rows(row), num_classes=10)
    for part in expected:
        assert part in text


def test_describe_names_the_best_variant_and_handles_no_runs():
    text = describe(summary_rows({"variant": "plain", "accuracy": 0.1, "ratio_median": 1e-8},
                                 {"variant": "residual", "accuracy": 0.9, "ratio_median": 1.0}))
    assert text.endswith("Best held-out accuracy: **residual** (90%).")
    assert describe(summary_rows().iloc[0:0]) == "No runs to compare yet."


def comparison() -> ComparisonData:
    """Two variants, three steps, two conv layers of plain and a Linear head that the ratio must skip."""
    steps = pd.DataFrame({"variant": ["plain"] * 3 + ["residual"] * 3, "step": [0, 1, 2] * 2,
                          "loss": [2.3, 2.3, 2.3, 2.3, 1.5, 1.0], "accuracy": [0.1, math.nan, 0.1, 0.1, math.nan, 0.7]})
    layers = pd.DataFrame({"variant": ["plain"] * 9, "step": [0, 0, 0, 1, 1, 1, 2, 2, 2],
                           "layer": ["c1", "c2", "fc"] * 3, "depth": [0, 1, 2] * 3, "type": ["Conv2d", "Conv2d", "Linear"] * 3,
                           "weight_grad_norm": [1e-8, 1.0, 5.0, 2e-8, 1.0, 5.0, 1e-8, 0.5, 5.0], "act_grad_norm": [1.0] * 9})
    return ComparisonData({"plain": "run-p", "residual": "run-r"}, steps, layers, {})


def test_figures_have_titles_axis_labels_with_units_and_one_trace_per_variant():
    view = compare_view(comparison(), steps=[0, 2])
    for key, y in [("loss", "nats"), ("accuracy", "%"), ("depth", "log scale"), ("ratio", "ratio, log scale")]:
        fig = view.figures[key]
        assert fig.layout.title.text and fig.layout.xaxis.title.text and y in fig.layout.yaxis.title.text, key
    assert [len(t.x) for t in view.figures["accuracy"].data] == [2, 2]         # only the evaluated steps
    assert list(view.figures["ratio"].data[0].y) == pytest.approx([1e-8, 2e-8, 2e-8])   # conv layers only
    assert view.ratios["ratio"].tolist() == pytest.approx([1e-8, 2e-8, 2e-8])
    assert profile_steps([0, 1, 2, 3, 4]) == [0, 2, 4] and profile_steps([]) == []
    layout = json.loads(view.figures["ratio"].to_json())["layout"]
    assert layout["yaxis"]["type"] == "log"
    assert (layout["shapes"][0]["y0"], layout["shapes"][0]["y1"]) == (0.01, 100)
    assert layout["annotations"][0]["y"] == 2                     # annotations on a log axis take log10
