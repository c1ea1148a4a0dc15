"""The statistics' small pure functions, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diagnostics.recording import stats


def test_activation_sums_by_hand():
    x = torch.tensor([[0.0, 1.0], [-2.0, 0.0]])
    torch.testing.assert_close(stats.activation_sums(x), torch.tensor([-1.0, 5.0, 2.0]))


def test_activation_sums_use_a_scratch_buffer_without_changing_the_result():
    x = torch.tensor([3.0, 0.0, -1.0])
    scratch = torch.full((10,), 7.0)
    torch.testing.assert_close(stats.activation_sums(x, scratch), torch.tensor([2.0, 10.0, 2.0]))
    torch.testing.assert_close(stats.gradient_sums(x, scratch), torch.tensor([4.0, 10.0, 3.0]))


def test_gradient_sums_by_hand():
    g = torch.tensor([3.0, -4.0, 0.0])
    torch.testing.assert_close(stats.gradient_sums(g), torch.tensor([7.0, 25.0, 4.0]))
    torch.testing.assert_close(stats.gradient_sums(torch.empty(0)), torch.zeros(3))


def test_half_precision_is_summed_in_float32():
    g = torch.full((70_000,), 1.0, dtype=torch.float16)       # Σg² = 70 000 overflows float16 (max 65 504)
    assert stats.gradient_sums(g)[1].item() == 70_000


@pytest.mark.parametrize("values, expected", [([1.0, 2.0], 0), ([1.0, float("nan")], 1),
                                              ([float("inf"), float("-inf"), 0.0], 2)],
                         ids=["finite", "nan", "infs"])
def test_nonfinite_count(values, expected):
    x = torch.tensor(values)
    assert stats.nonfinite_count(x, stats.gradient_sums(x)) == expected


@pytest.mark.parametrize("length", [stats.CPU_PIECE - 1, stats.CPU_PIECE, stats.CPU_PIECE + 1,
                                    3 * stats.CPU_PIECE + 5], ids=["below-a-piece", "one-piece", "one-more",
                                                                     "pieces-and-a-tail"])
def test_gradient_sums_by_pieces_equal_float64(length):
    torch.manual_seed(0)
    g = torch.randn(length) * torch.logspace(-3, 1, length)
    g[-1] = -50.0                                             # the largest |g| sits in the tail piece
    ref = g.double()
    got = stats.gradient_sums(g, torch.empty(10)).double()     # a scratch too small is not used
    torch.testing.assert_close(got, torch.stack((ref.abs().sum(), (ref * ref).sum(), ref.abs().max())),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad, where", [(float("nan"), 2), (float("inf"), 1), (float("-inf"), 0)],
                         ids=["nan-in-last-piece", "inf-in-middle-piece", "minus-inf-in-first-piece"])
def test_gradient_sums_by_pieces_show_nonfinite_values(bad, where):
    g = torch.ones(2 * stats.CPU_PIECE + 3)
    g[where * stats.CPU_PIECE] = bad
    sums = stats.gradient_sums(g)
    assert not math.isfinite(sums[1].item()) and not math.isfinite(sums[2].item())
    assert stats.nonfinite_count(g, sums) == 1


def test_long_tensors_are_summed_accurately():
    x = torch.rand(12 * (1 << 20) + 17, dtype=torch.float32)
    exact = float((x.double() ** 2).sum())
    assert abs(stats.squared_norm(x).item() - exact) / exact < 1e-5


def test_log10_histogram_counts_zeros_and_nonfinite_separately():
    g = torch.tensor([0.0, 1e-3, -1e-3, 10.0, float("nan"), 1e-40, 1e20])
    h = stats.log10_histogram(g).numpy()
    counts, zeros, nonfinite = h[:-2], h[-2], h[-1]
    assert (zeros, nonfinite) == (1, 1)
    assert counts.sum() == 5
    centers = (stats.HIST_EDGES[:-1] + stats.HIST_EDGES[1:]) / 2
    assert counts[np.argmin(abs(centers - (-2.75)))] == 2      # both ±1e-3 in the bin [-3, -2.5)
    assert counts[0] == 1 and counts[-1] == 1                  # 1e-40 and 1e20 land in the outer bins


def test_host_formulas_by_hand():
    assert stats.l2_norm(25.0) == 5.0
    assert stats.mean(6.0, 3) == 2.0 and math.isnan(stats.mean(1.0, 0))
    assert stats.std(total=6.0, sumsq=14.0, count=3) == pytest.approx(math.sqrt(14 / 3 - 4))
    assert stats.fraction(1, 4) == 0.25
    assert math.isnan(stats.ratio(1.0, 0.0)) and stats.ratio(1.0, 4.0) == 0.25


def test_every_statistic_has_a_label():
    numeric = [c for c in stats.LAYER_COLUMNS if c not in ("run", "step", "layer", "type", "kind", "depth", "calls",
                                                      "shared_with", "in_optimizer")
               and not c.endswith("_nonfinite")]
    assert set(numeric) <= set(stats.STAT_LABELS)


def test_segment_ids_by_hand():
    assert stats.segment_ids([2, 1, 3]).tolist() == [0, 0, 1, 2, 2, 2]


def test_batched_sums_equal_one_tensor_at_a_time():
    torch.manual_seed(2)
    tensors = [torch.randn(4, 3), torch.tensor([-7.0]), torch.zeros(5), torch.randn(2, 2, 2) * 1e-3]
    ids = stats.segment_ids([t.numel() for t in tensors])
    got = stats.gradient_sums_batched(tensors, ids)
    want = torch.stack([stats.gradient_sums(t.double()) for t in tensors])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(stats.squared_norms_batched(tensors, ids),
                               torch.stack([stats.squared_norm(t.double()) for t in tensors]))


def test_batched_sums_show_nonfinite_values_in_their_own_row_only():
    tensors = [torch.ones(3), torch.tensor([1.0, float("nan")]), torch.tensor([float("-inf"), 2.0])]
    got = stats.gradient_sums_batched(tensors, stats.segment_ids([3, 2, 2]))
    assert got[0].tolist() == [3.0, 3.0, 1.0]
    assert torch.isnan(got[1]).all() and torch.isinf(got[2]).all()
