"""manual.duality: a transposed convolution is its convolution's input-gradient; the output-size arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diagnostics.errors import LayerOptionsError
from diagnostics.manual import duality as dual
from diagnostics.views import catalogue


@pytest.mark.parametrize("key, options, shape", [
    ("conv2d", {}, (2, 3, 7, 6)),
    ("conv2d", {"stride": (2, 3), "padding": (1, 0), "dilation": (2, 1), "groups": 3, "out_channels": 6},
     (2, 3, 8, 9)),
    ("conv2d", {"padding": "same", "kernel_size": (2, 4)}, (1, 3, 5, 6)),
    ("conv2d", {"stride": (2, 2), "padding_mode": "reflect"}, (2, 3, 7, 8)),
    ("conv1d", {"stride": 3}, (2, 3, 10)),
    ("convtranspose2d", {}, (2, 3, 4, 5)),
    ("convtranspose2d", {"dilation": (3, 3), "output_padding": (2, 2), "groups": 3, "out_channels": 6},
     (1, 3, 3, 4)),
], ids=["conv2d", "conv2d-stride-groups", "conv2d-same-asymmetric", "conv2d-reflect", "conv1d",
        "convtranspose2d", "convtranspose2d-output-padding-beyond-stride"])
def test_transpose_duality_holds(key, options, shape):
    module = catalogue.build_layer(key, options, shape[1], seed=4)
    duality = dual.transpose_duality(module, catalogue.make_input(shape, 4), seed=4)
    assert duality.scale > 0
    assert duality.max_rel_diff < 1e-12
    if key != "convtranspose2d":
        table = duality.table
        assert (table["H_out (transpose)"] == table["target (H or H_p)"]).all()
        assert (table["output_padding"] < table["stride s"]).all()


def test_transpose_duality_shape_arithmetic_by_hand():
    """H = 8, k = 3, s = 2, p = 1: H_out = floor((8 + 2 - 2 - 1) / 2) + 1 = 4; (8 + 2 - 2 - 1) mod 2 = 1."""
    module = catalogue.build_layer("conv2d", {"stride": (2, 2)}, 3)
    duality = dual.transpose_duality(module, catalogue.make_input((1, 3, 8, 7)))
    rows = duality.table.set_index("dimension")
    assert rows.loc["H", ["H_out (conv)", "output_padding", "H_out (transpose)"]].tolist() == [4, 1, 8]
    assert rows.loc["W", ["H_out (conv)", "output_padding", "H_out (transpose)"]].tolist() == [4, 0, 7]
    assert "output_padding=(1, 0)" in duality.transpose


def test_transpose_duality_refuses_other_layers():
    with pytest.raises(LayerOptionsError, match="duality applies to Conv1d, Conv2d and ConvTranspose2d") as caught:
        dual.transpose_duality(nn.ReLU(), torch.randn(1, 2, 3, 3))
    assert "not ReLU" in str(caught.value)


@pytest.mark.parametrize("options, shape", [
    ({}, (1, 3, 7, 6)),
    ({"stride": (3, 2), "dilation": (2, 1), "padding": (0, 2)}, (1, 3, 11, 6)),
    ({"padding": "same", "kernel_size": (4, 2)}, (1, 3, 5, 5)),
], ids=["default", "strided", "same"])
def test_conv_output_table_matches_pytorch(options, shape):
    module = catalogue.build_layer("conv2d", options, shape[1])
    table = dual.conv_output_table(module, shape)
    assert tuple(table["H_out"]) == tuple(module(catalogue.make_input(shape)).shape[2:])
