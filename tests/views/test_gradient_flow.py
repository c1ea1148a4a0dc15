"""Data shaping, figures and the HTML report of the dashboard's views, on hand-made and real data (findings:
tests/views/test_diagnosis.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnostics.views import figures as plots
from diagnostics.views.matrices import (HistogramMatrix, StatMatrix, depth_profile, downsample, first_last_ratio,
                                       histogram_quantiles, layers_with_values, load_stat_matrix, matrix_rows,
                                       stat_matrix_from_frame, step_buckets)
from diagnostics.views.kernels import channel_order, kernel_page
from diagnostics.views.report import html_report
from diagnostics.views.gradient_flow import CachedLoader, FlowOptions, gradient_flow_view

from tests.recorded import make_store


def matrix(values, steps=None, layers=None, stat="weight_grad_norm", run="r") -> StatMatrix:
    values = np.asarray(values, dtype=float)
    steps = np.arange(values.shape[1]) if steps is None else np.asarray(steps)
    layers = tuple(layers or [f"l{i}" for i in range(values.shape[0])])
    return StatMatrix(run, stat, layers, ("Conv2d",) * len(layers), steps, values)


# --- shaping ------------------------------------------------------------------------------------------------

def test_pivot_orders_layers_by_execution_and_leaves_holes_as_nan():
    frame = pd.DataFrame({"step": [0, 0, 1, 1, 2], "layer": ["b", "a", "b", "a", "a"], "depth": [1, 0, 1, 0, 0],
                          "type": ["Linear", "Conv2d"] * 2 + ["Conv2d"], "x": [1.0, 2.0, 3.0, 4.0, 5.0]})
    m = stat_matrix_from_frame(frame, "r", "x")
    assert m.layers == ("a", "b") and m.types == ("Conv2d", "Linear")
    np.testing.assert_array_equal(m.steps, [0, 1, 2])
    np.testing.assert_array_equal(m.values, [[2, 4, 5], [1, 3, np.nan]])


def test_buckets_cover_every_step_exactly_once():
    steps = np.arange(0, 10_000, 3)
    buckets = step_buckets(steps, 300)
    assert len(buckets.starts) <= 300 and buckets.starts[0] == 0
    sizes = np.diff(np.append(buckets.starts, len(steps)))
    assert sizes.sum() == len(steps) and sizes.min() >= 1
    assert buckets.first_step[0] == 0 and buckets.last_step[-1] == steps[-1]


def test_downsample_keeps_min_mean_max_and_ignores_nan():
    values = np.array([[1.0, 5.0, np.nan, 3.0, 10.0, 0.5]])
    buckets, series = downsample(values, np.arange(6), 2)
    np.testing.assert_array_equal(buckets.starts, [0, 3])
    np.testing.assert_allclose(series["min"][0], [1.0, 0.5])
    np.testing.assert_allclose(series["max"][0], [5.0, 10.0])
    np.testing.assert_allclose(series["mean"][0], [3.0, 13.5 / 3])
    _, same = downsample(values, np.arange(6), 100)
    np.testing.assert_array_equal(same["mean"], values)          # short runs are drawn point for point


def test_depth_profile_takes_the_recorded_step_at_or_before_the_request():
    m = matrix([[1, 2, 3], [4, 5, 6]], steps=[0, 10, 20])
    assert depth_profile(m, 15)["value"].tolist() == [2, 5]
    assert depth_profile(m, 15)["step"].iloc[0] == 10
    assert depth_profile(m, -5)["step"].iloc[0] == 0


def test_first_last_ratio_skips_layers_without_the_statistic():
    m = matrix([[1e-6, 2e-6], [np.nan, np.nan], [1.0, 2.0]])
    first, last, ratio = first_last_ratio(m)
    assert (first, last) == ("l0", "l2")
    np.testing.assert_allclose(ratio, [1e-6, 1e-6])
    assert layers_with_values(m) == ["l0", "l2"]


@pytest.mark.parametrize("types,expected", [(None, ("c0", "fc")), (("Conv1d", "Conv2d"), ("c0", "c1"))],
                         ids=["any-layer", "conv-layers"])
def test_first_last_ratio_takes_the_layer_kinds_as_an_argument(types, expected):
    m = StatMatrix("r", "weight_grad_norm", ("c0", "c1", "fc"), ("Conv2d", "Conv2d", "Linear"), np.arange(2),
                   np.array([[1.0, 2.0], [4.0, 0.0], [8.0, 8.0]]))
    first, last, ratio = first_last_ratio(m, types)
    assert (first, last) == expected
    expected_ratio = [0.25, np.nan] if types else [0.125, 0.25]          # a zero last value gives NaN, not inf
    np.testing.assert_allclose(ratio, expected_ratio)


@pytest.mark.parametrize("kinds,expected", [(("leaf",), ("patch", "head")), (("leaf", "owner"), ("Model", "head"))],
                         ids=["leaves", "with-owners"])
def test_first_last_ratio_is_between_leaves_unless_asked(kinds, expected):
    # ViT-like: the model owns a class token (an "owner" row ranked before its first leaf).
    m = StatMatrix("r", "weight_grad_norm", ("Model", "patch", "head"), ("VisionTransformer", "Conv2d", "Linear"),
                   np.arange(1), np.array([[1e-9], [2.0], [4.0]]), ("owner", "leaf", "leaf"))
    first, last, _ = first_last_ratio(m, kinds=kinds)
    assert (first, last) == expected


def test_histogram_quantiles_interpolate_inside_bins():
    edges = np.array([-3.0, -2.0, -1.0, 0.0])
    hist = HistogramMatrix("r", "l", "weight_grad", edges, np.array([0]), np.array([[0.0], [10.0], [0.0]]),
                           np.array([2.0]), np.array([1.0]))
    q = histogram_quantiles(hist).iloc[0]
    assert q["q50"] == pytest.approx(-1.5) and q["q05"] == pytest.approx(-1.95) and q["zeros"] == 2


# --- figures and views --------------------------------------------------------------------------------------

def test_run_colours_are_fixed_by_store_order_and_colour_blind_safe():
    colors = plots.run_colors(["a", "b", "c"])
    assert colors["a"] == plots.PALETTE[0] and len(set(colors.values())) == 3
    assert plots.run_colors(["a", "b"])["b"] == plots.run_colors(["a", "b", "z"])["b"]
    assert "#000000" not in plots.PALETTE


def test_every_view_figure_has_a_title_and_labelled_axes(tmp_path):
    store, runs = make_store(tmp_path / "runs")
    ids = [runs["plain"], runs["bn"]]
    view = gradient_flow_view(CachedLoader(store), FlowOptions(ids), plots.run_colors(ids), {})
    assert set(view.figures) == {"depth", "heat_weight", "heat_act", "trends", "ratio", "loss_norm", "histogram",
                                 "quantiles"}
    for name, fig in view.figures.items():
        layout = fig.layout.to_plotly_json()
        titles = {k[0]: [a.get("title", {}).get("text") for key, a in layout.items() if key.startswith(f"{k}axis")]
                  for k in ("x", "y")}
        assert fig.layout.title.text, name
        assert any(titles["x"]) and any(titles["y"]), name
    data = view.data()
    assert set(data["run"]) == set(ids) and "weight_grad_norm" in data
    assert len(data) == sum(m.values.size for m in view.matrices.values())
    assert len(view.figures["depth"].data) == 2                    # one line per run


def test_heatmap_rows_are_layers_with_the_statistic_in_execution_order(tmp_path):
    store, runs = make_store(tmp_path / "runs")
    m = load_stat_matrix(store, runs["plain"], "weight_grad_norm")
    fig = plots.heatmap_figure(matrix_rows(m, None, 300))
    assert list(fig.data[0].y) == layers_with_values(m)
    assert list(fig.data[0].y) == ["0", "2", "4", "6", "10"]          # conv, conv, conv, conv, linear


def test_heatmap_of_a_long_run_is_bucketed_and_small():
    rng = np.random.default_rng(0)
    big = matrix(10 ** rng.uniform(-8, 1, size=(200, 10_000)))
    fig = plots.heatmap_figure(matrix_rows(big, None, 300))
    assert np.asarray(fig.data[0].z).shape == (200, 300)
    assert len(fig.to_json()) < 1_000_000
    assert "bucket means of 10000 steps" in fig.layout.xaxis.title.text


def test_empty_inputs_give_an_explanatory_figure_not_an_error():
    empty = matrix_rows(matrix(np.zeros((0, 0))), None, 300)
    for fig in (plots.heatmap_figure(empty), plots.trends_figure(empty, True), plots.depth_figure([], "x", True, {}),
                plots.histogram_figure([], {}), plots.ratio_figure([empty], {}, {})):
        assert fig.layout.annotations and fig.layout.annotations[0].text


# --- kernels ------------------------------------------------------------------------------------------------

def test_kernel_pages_put_the_largest_gradients_first():
    grad = np.zeros((5, 3, 2, 2))
    grad[3] = 10.0
    grad[1] = 5.0
    grad[:, 2] *= 2
    out_order, in_order = channel_order(grad)
    assert list(out_order[:2]) == [3, 1] and in_order[0] == 2
    page = kernel_page({"grad": grad, "weight": np.ones_like(grad)}, out_page=0, out_per_page=2, in_per_page=2)
    assert list(page.out_channels) == [3, 1] and page.out_pages == 3 and page.in_pages == 2
    assert page.arrays["weight"].shape == (2, 2, 2, 2)
    last = kernel_page({"grad": grad}, out_page=99, out_per_page=2)
    assert len(last.out_channels) == 1                              # clamped to the last page


def test_kernel_grid_places_each_tile_and_uses_a_symmetric_scale():
    k = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2) - 5
    fig = plots.kernel_grid_figure(k, "t")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (2 * 3 - 1, 3 * 3 - 1)
    np.testing.assert_array_equal(z[3:5, 6:8], k[1, 2])
    assert fig.data[0].zmin == -fig.data[0].zmax == -18


# --- report -------------------------------------------------------------------------------------------------

def test_html_report_is_self_contained(tmp_path):
    store, runs = make_store(tmp_path / "runs")
    ids = [runs["plain"]]
    view = gradient_flow_view(CachedLoader(store), FlowOptions(ids), plots.run_colors(ids), {})
    findings = [f for fs in view.findings.values() for f in fs]
    html = html_report("My <run>", {"steps": 12}, findings, list(view.figures.values()))
    assert html.startswith("<!DOCTYPE html>") and "My &lt;run&gt;" in html
    assert html.count("Plotly.newPlot") == len(view.figures)
    assert '<script src="http' not in html and len(html) > 1_000_000     # plotly.js inlined, nothing fetched


def test_the_pages_downloads_are_built_without_streamlit(tmp_path):
    import io
    import zipfile

    from diagnostics.views.export import table_bytes, tensorboard_zip
    from diagnostics.views.gradient_flow import flow_report

    store, runs = make_store(tmp_path / "runs")
    ids = list(runs.values())
    view = gradient_flow_view(CachedLoader(store), FlowOptions(ids), plots.run_colors(ids), {})
    assert table_bytes(view.data(), "csv").startswith(b"run,step,layer")
    assert table_bytes(view.data(), "parquet")[:4] == b"PAR1"
    with zipfile.ZipFile(io.BytesIO(tensorboard_zip(store, ids[0]))) as zf:
        assert any("events.out.tfevents" in name for name in zf.namelist())
    report = flow_report(view, store, ids, {}, "weight_grad_norm")
    assert report.startswith("<!DOCTYPE html>") and ids[0] in report
