"""Widget groups of the Gradient checks page: a layer's constructor options, the input's shape, cached checks."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import streamlit as st

from diagnostics.manual import PADDING_MODES
from diagnostics.serving.compute import layer_check_work
from diagnostics.views.catalogue import LAYERS, build_layer, input_shape
from diagnostics.views.checks import CheckView, check_view, selector_sizes
from diagnostics.views.figures import gradient_figure

from .access import compute_queue, session_id


class _Grid:
    """Hands out the cells of rows of ``n`` columns, left to right, starting a new row when one is full."""

    def __init__(self, n: int = 4) -> None:
        self.n = n
        self.cells: list = []

    def cell(self):
        if not self.cells:
            self.cells = list(st.columns(self.n))
        return self.cells.pop(0)

    def row(self) -> None:
        """The next cell starts a new row."""
        self.cells = []


def _int(container, label: str, key: str, value: int, min_value: int | None = 0, max_value: int | None = 32,
         help: str | None = None) -> int:
    return int(container.number_input(label, min_value=min_value, max_value=max_value, value=int(value), step=1,
                                      key=key, help=help))


def _sizes(grid: _Grid, label: str, key: str, value: Any, min_value: int, max_value: int, dims: int,
           help: str | None = None):
    """One int per spatial dimension in the next cells: ``(h, w)`` for 2-d layers, an int for 1-d ones."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims
    if dims == 1:
        return _int(grid.cell(), label, key, values[0], min_value, max_value, help)
    return (_int(grid.cell(), f"{label} (h)", f"{key}_h", values[0], min_value, max_value, help),
            _int(grid.cell(), f"{label} (w)", f"{key}_w", values[1], min_value, max_value, help))


def _conv_options(layer: str, channels: int, grid: _Grid) -> dict[str, Any]:
    spec = LAYERS[layer]
    d, k, dims = spec.defaults, f"chk_{layer}", (1 if spec.layout == "NCL" else 2)
    options = {"out_channels": _int(grid.cell(), "Output channels", f"{k}_out_channels", d["out_channels"], 1, 32)}
    depthwise = grid.cell().checkbox("Depthwise (groups = in_channels)", key=f"{k}_depthwise",
                                     help="Each input channel gets its own filters; out_channels must be a multiple.")
    cell = grid.cell()
    if depthwise:
        cell.caption(f"groups = {channels}")
        options["groups"] = channels
    else:
        options["groups"] = _int(cell, "Groups", f"{k}_groups", d["groups"], 1, 32,
                                 help="Both in_channels and out_channels must be divisible by groups.")
    options["bias"] = grid.cell().checkbox("Bias", value=True, key=f"{k}_bias")
    grid.row()
    options["kernel_size"] = _sizes(grid, "Kernel size", f"{k}_kernel", d["kernel_size"], 1, 9, dims)
    options["stride"] = _sizes(grid, "Stride", f"{k}_stride", d["stride"], 1, 4, dims)
    grid.row()
    if spec.family == "conv":
        kind = grid.cell().selectbox("Padding", ["numbers", "same", "valid"], key=f"{k}_padding_kind",
                                     help="'same' keeps the size (stride 1 only); 'valid' pads nothing.")
        numbers = _sizes(grid, "Padding", f"{k}_padding", d["padding"], 0, 8, dims)
        options["padding"] = numbers if kind == "numbers" else kind
        options["padding_mode"] = grid.cell().selectbox("Padding mode", PADDING_MODES, key=f"{k}_padding_mode")
    else:
        options["padding"] = _sizes(grid, "Padding", f"{k}_padding", d["padding"], 0, 8, dims)
        options["output_padding"] = _sizes(grid, "Output padding", f"{k}_output_padding", d["output_padding"], 0,
                                           4, dims, help="Must be smaller than the stride or the dilation.")
    grid.row()
    options["dilation"] = _sizes(grid, "Dilation", f"{k}_dilation", d["dilation"], 1, 4, dims)
    return options


def _pool_options(layer: str, grid: _Grid) -> dict[str, Any]:
    spec = LAYERS[layer]
    d, k, dims = spec.defaults, f"chk_{layer}", (1 if spec.layout == "NCL" else 2)
    options = {"kernel_size": _sizes(grid, "Kernel size", f"{k}_kernel", d["kernel_size"], 1, 9, dims),
               "stride": _sizes(grid, "Stride", f"{k}_stride", d["stride"], 1, 4, dims)}
    grid.row()
    options["padding"] = _sizes(grid, "Padding", f"{k}_padding", d["padding"], 0, 4, dims,
                                help="At most half the (dilated) kernel size.")
    if spec.family == "max_pool":
        options["dilation"] = _sizes(grid, "Dilation", f"{k}_dilation", d["dilation"], 1, 4, dims)
    grid.row()
    options["ceil_mode"] = grid.cell().checkbox("ceil_mode", key=f"{k}_ceil_mode",
                                                help="Round the output size up: a last, partial window.")
    if spec.family == "max_pool":
        options["return_indices"] = grid.cell().checkbox("return_indices", key=f"{k}_return_indices",
                                                         help="Also return the argmax (the gradient ignores it).")
        return options
    options["count_include_pad"] = grid.cell().checkbox(
        "count_include_pad", value=True, key=f"{k}_count_include_pad",
        help="Divide by the window size including the padding.")
    if dims == 2:
        override = _int(grid.cell(), "divisor_override (0 = none)", f"{k}_divisor_override", 0, 0, 100)
        options["divisor_override"] = override or None
    return options


def layer_options(layer: str, channels: int) -> dict[str, Any]:
    """Every constructor option of a layer type, as widgets (keys ``chk_<layer>_<option>``).

    Args:
        layer: A key of :data:`~diagnostics.views.checks.LAYERS`.
        channels: The input's channels (for depthwise convolutions).

    Returns:
        The options for :func:`~diagnostics.views.checks.build_layer`.
    """
    spec = LAYERS[layer]
    d, k, dims = spec.defaults, f"chk_{layer}", (1 if spec.layout == "NCL" else 2)
    grid = _Grid()
    if spec.family in ("conv", "conv_transpose"):
        return _conv_options(layer, channels, grid)
    if spec.family in ("max_pool", "avg_pool"):
        return _pool_options(layer, grid)
    if spec.family in ("adaptive_avg", "adaptive_max"):
        options = {"output_size": _sizes(grid, "Output size", f"{k}_output_size", d["output_size"], 1, 16, dims)}
        if spec.family == "adaptive_max":
            options["return_indices"] = grid.cell().checkbox("return_indices", key=f"{k}_return_indices")
        return options
    if spec.family == "relu":
        return {"inplace": grid.cell().checkbox("inplace", key=f"{k}_inplace")}
    if spec.family == "linear":
        return {"out_features": _int(grid.cell(), "Output features", f"{k}_out_features", d["out_features"], 1, 32),
                "bias": grid.cell().checkbox("Bias", value=True, key=f"{k}_bias")}
    if spec.family == "batchnorm":
        return {"mode": grid.cell().radio("Mode", ["train", "eval"], horizontal=True, key=f"{k}_mode",
                                          help="train: batch statistics; eval: running statistics (random here)."),
                "eps": float(grid.cell().number_input("eps", 1e-12, 1.0, 1e-5, format="%.1e", key=f"{k}_eps")),
                "momentum": float(grid.cell().number_input("momentum", 0.0, 1.0, 0.1, key=f"{k}_momentum")),
                "affine": grid.cell().checkbox("affine (gamma, beta)", value=True, key=f"{k}_affine"),
                "track_running_stats": grid.cell().checkbox("track_running_stats", value=True, key=f"{k}_track")}
    if spec.family == "flatten":
        return {"start_dim": _int(grid.cell(), "start_dim", f"{k}_start_dim", 1, -4, 3),
                "end_dim": _int(grid.cell(), "end_dim", f"{k}_end_dim", -1, -4, 3)}
    st.caption(f"{spec.name} has no options.")
    return {}


def input_shape_widgets(layer: str) -> tuple[int, ...]:
    """The input's shape (keys ``chk_batch``, ``chk_channels``, ``chk_height``, ``chk_width``).

    Args:
        layer: A key of :data:`~diagnostics.views.checks.LAYERS`.

    Returns:
        The shape for :func:`~diagnostics.views.checks.check_layer`.
    """
    spec = LAYERS[layer]
    channel_label = {"in_channels": "Channels (in_channels)", "in_features": "Features (in_features)",
                     "num_features": "Channels (num_features)"}.get(spec.channel_arg, "Channels")
    cols = st.columns(4)
    batch = _int(cols[0], "Batch N", "chk_batch", 2, 0, 8, help="0 and 1 are allowed.")
    channels = _int(cols[1], channel_label, "chk_channels", 3, 1, 16)
    height = width = 0
    if spec.layout == "NCHW":
        height = _int(cols[2], "Height H", "chk_height", 7, 1, 32)
        width = _int(cols[3], "Width W", "chk_width", 6, 1, 32)
    elif spec.layout in ("NCL", "NC[L]"):
        optional = spec.layout == "NC[L]"
        width = _int(cols[2], "Length L" + (" (0 = none)" if optional else ""), "chk_length", 7,
                     0 if optional else 1, 32)
    return input_shape(layer, batch, channels, height, width)


@st.cache_resource(show_spinner=False)
def _results() -> OrderedDict:
    """Finished checks of every session, newest last (read-only views; at most 64 kept)."""
    return OrderedDict()


def cached_check_view(layer: str, options: dict[str, Any], shape: tuple[int, ...], impl: str, seed: int) -> CheckView:
    """:func:`~diagnostics.views.checks.check_view` in its turn in the process's compute queue, refused over the
    check limit, cached by its arguments (errors are not cached).

    The work is estimated on the meta device before anything runs. While it waits, its place in the queue is
    shown; changing a setting or leaving the page (a rerun) cancels a check that has not started.

    Raises:
        ComputeLimitError: The check is over the limit (``GFD_CHECK_LIMIT_GMAC``).
        LayerOptionsError: PyTorch refuses the options for this input.
    """
    key = (layer, repr(sorted(options.items())), tuple(shape), impl, seed)
    results = _results()
    if key in results:
        results.move_to_end(key)
        return results[key]
    try:
        work = layer_check_work(build_layer(layer, options, shape[1], seed), tuple(shape), impl)
    except (RuntimeError, ValueError, IndexError):
        work = 0.0                                  # PyTorch refuses this input: the check says why, at once
    queue = compute_queue("checks")
    ticket = queue.submit(session_id(), f"gradient check of {LAYERS[layer].name}", work,
                          lambda: check_view(layer, options, shape, impl=impl, seed=seed))
    shown = st.empty()
    try:
        while not ticket.wait(0.2):
            position = queue.position(ticket)
            shown.info(f"Waiting for its turn: number {position} in this dashboard's queue of gradient checks."
                       if position else
                       f"Checking the manual gradients (about {work:.2g} GMAC)…", icon=":material/hourglass_top:")
    finally:
        if not ticket.finished:
            queue.cancel(ticket)                     # a rerun interrupted the wait: drop the check if not started
    shown.empty()
    if ticket.exception is not None:
        raise ticket.exception
    results[key] = ticket.result
    while len(results) > 64:
        results.popitem(last=False)
    return ticket.result


#: Per gradient: the pickers' widget keys and the figure title; per layer kind, the pickers' labels.
_HEATMAPS = {"input": (("chk_sample", "chk_channel"), "∂L/∂X", "sample {}, channel {}"),
             "weight": (("chk_weight_first", "chk_weight_second"), "∂L/∂W", "kernel [{}, {}]")}


def gradient_heatmap(view: CheckView, tensor: str) -> None:
    """The manual, autograd and difference heatmaps of ∂L/∂X or ∂L/∂W, with pickers for the 2-d slice drawn."""
    grad = view.result.manual[tensor]
    keys, title, where = _HEATMAPS[tensor]
    if tensor == "input":
        names = ("Sample n", "Channel c")
    elif view.family == "conv_transpose":
        names = ("Input channel", "Output channel (in its group)")
    else:
        names = ("Output channel", "Input channel (in its group)")
    first = second = 0
    sizes = selector_sizes(grad.shape)
    if sizes:
        c1, c2 = st.columns(2)
        first = int(c1.number_input(names[0], 0, sizes[0] - 1, 0, key=keys[0]))
        second = int(c2.number_input(names[1], 0, sizes[1] - 1, 0, key=keys[1]))
        title += f" ({where.format(first, second)})"
    st.plotly_chart(gradient_figure(grad, view.result.autograd[tensor], title, tensor, first, second),
                    key=f"chk_fig_{tensor}")
