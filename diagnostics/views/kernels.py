"""The Kernel heatmaps page's view: a conv layer's snapshot, channels by gradient size, paged, as tile grids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..manual.conv import conv_formulas
from ..manual.rule import Formula
from .figures import kernel_grid_figure
from .text import plotly_text


@dataclass(frozen=True)
class KernelPage:
    """One page of a (C_out, C_in, k, k) snapshot: the channels shown and their arrays by kind."""

    out_channels: np.ndarray
    in_channels: np.ndarray
    arrays: dict[str, np.ndarray]        # kind -> (len(out_channels), len(in_channels), kH, kW)
    out_pages: int
    in_pages: int


def channel_order(grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output and input channels sorted by the L2 norm of their gradient, largest first.

    Args:
        grad: (C_out, C_in, ...) gradient of a conv weight.
    """
    g = grad.reshape(grad.shape[0], grad.shape[1], -1).astype(np.float64)
    sq = (g ** 2).sum(axis=2)                                  # (C_out, C_in)
    return np.argsort(-sq.sum(axis=1), kind="stable"), np.argsort(-sq.sum(axis=0), kind="stable")


def page_count(n: int, per_page: int) -> int:
    """How many pages of ``per_page`` items hold ``n`` items (at least one)."""
    return max(1, -(-n // max(1, per_page)))


def kernel_page(arrays: dict[str, np.ndarray], out_page: int = 0, in_page: int = 0, out_per_page: int = 16,
                in_per_page: int = 16, order_by: str = "grad") -> KernelPage:
    """One block of (output, input) channel pairs, channels with the largest gradient first.

    Args:
        arrays: kind -> (C_out, C_in, ...) arrays of one layer (``grad``, ``weight``, ``update``).
        out_page: 0-based page over output channels (clamped to the last page).
        in_page: 0-based page over input channels.
        out_per_page: Output channels per page.
        in_per_page: Input channels per page.
        order_by: Which array orders the channels (the gradient by default).
    """
    reference = arrays[order_by] if order_by in arrays else next(iter(arrays.values()))
    out_order, in_order = channel_order(reference)
    out_pages, in_pages = page_count(len(out_order), out_per_page), page_count(len(in_order), in_per_page)
    out_page = min(max(int(out_page), 0), out_pages - 1)
    in_page = min(max(int(in_page), 0), in_pages - 1)
    outs = out_order[out_page * out_per_page:(out_page + 1) * out_per_page]
    ins = in_order[in_page * in_per_page:(in_page + 1) * in_per_page]
    return KernelPage(outs, ins, {k: v[np.ix_(outs, ins)] for k, v in arrays.items()}, out_pages, in_pages)


#: The kinds of array a snapshot holds, with their titles, in the order the page shows them.
KINDS: dict[str, str] = {"grad": "∂L/∂W (weight gradient)", "weight": "W (weights)",
                         "update": "ΔW (update of the optimizer step)"}


@dataclass
class KernelView:
    """What the Kernel heatmaps page draws for one conv layer at one recorded step."""

    page: KernelPage
    figures: dict[str, go.Figure]        # kind -> grid of k×k tiles (only the kinds recorded)
    formula: Formula                     # ∂L/∂W, from the conv rule of :mod:`diagnostics.manual`
    shape: tuple[int, ...]               # the weight's shape (C_out, C_in, k...)

    def tiles(self, arrays: dict[str, np.ndarray], out_channel: int, in_channel: int) -> dict[str, pd.DataFrame]:
        """The numbers of one (output, input) channel pair's tile, per kind."""
        return {kind: pd.DataFrame(np.atleast_2d(arrays[kind][out_channel, in_channel])) for kind in self.figures}


def kernel_view(arrays: dict[str, np.ndarray], layer: str, step: int, per_page: int = 16, out_page: int = 0,
                in_page: int = 0) -> KernelView:
    """One page of a conv layer's snapshot: a tile grid per kind on one symmetric scale per kind (all pages).

    Args:
        arrays: kind -> (C_out, C_in, k...) arrays of the layer (``RunStore.kernel_snapshot(...).arrays[layer]``).
        layer: The layer's name (for the titles).
        step: The recorded step (for the titles).
        per_page: Channels per page, in both directions.
        out_page: 0-based page over output channels.
        in_page: 0-based page over input channels.
    """
    page = kernel_page(arrays, out_page, in_page, per_page, per_page)
    figs = {}
    for kind, title in KINDS.items():
        if kind in arrays:
            zmax = float(np.nanmax(np.abs(arrays[kind]))) if arrays[kind].size else 1.0
            figs[kind] = kernel_grid_figure(page.arrays[kind], f"{title} — {plotly_text(layer)}, step {step}", zmax,
                                            page.out_channels, page.in_channels)
    shape = tuple(next(iter(arrays.values())).shape)
    weight = next(f for f in conv_formulas(len(shape) - 2) if f.tensor == "weight")
    return KernelView(page, figs, weight, shape)
