"""Manual backward of the pooling layers: max, average and adaptive, 1-d and 2-d, fast and with loops.

Notation (2-d; a 1-d pool is a 2-d pool on a height of one): input ``X`` of shape ``(N, C, H, W)``, window
``(i, j)`` covering the input rows ``h = i*s_h - p_h + a*d_h`` for ``a < k_h`` (and likewise the columns),
positions outside the input excluded.

* Max pooling: ``Y[n, c, i, j] = X[n, c, h*, w*]`` at the window's maximum, so the gradient goes only there:
  ``dL/dX[n, c, h, w] = sum_{(i, j) : argmax(i, j) = (h, w)} dL/dY[n, c, i, j]``. Ties go to the element
  PyTorch picks on the CPU: the first maximum in row-major window order, a NaN over any number.
* Average pooling: ``Y[n, c, i, j] = sum_{window} X / D(i, j)``, so every input of a window gets
  ``dL/dY[n, c, i, j] / D(i, j)``, with PyTorch's divisor ``D``: ``divisor_override`` if given, else the
  window size clipped to the padded input (``count_include_pad=True``) or to the input (``False``).
* Adaptive pooling: window ``i`` covers rows ``floor(i*H/H_out)`` to ``ceil((i+1)*H/H_out)`` (exclusive).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rule import DY, Formula, Grads, Rule, State, expand_param, require_small

CHANNELS_LAST_MIN_CHANNELS = 16
"""From this many channels, the fast max-pool rule searches the argmax in channels-last layout."""


def _pool_config(
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None,
    padding: int | Sequence[int],
    dilation: int | Sequence[int],
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    kernel = expand_param(kernel_size, 2, "kernel_size")
    # An empty stride (F.max_pool2d's default) means stride = kernel_size.
    strides = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else stride
    return (
        kernel,
        expand_param(strides, 2, "stride"),
        expand_param(padding, 2, "padding"),
        expand_param(dilation, 2, "dilation"),
    )


def max_pool2d_grad_input(
    input: Tensor,
    grad_output: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    *,
    indices: Tensor | None = None,
) -> Tensor:
    """dL/dX of ``max_pool2d``: each window's dL/dY goes to the position of its maximum.

    ``dL/dX[n, c, h, w] = sum over the windows whose argmax is (h, w) of dL/dY[n, c, i, j]``: a
    ``scatter_add`` into the flattened input at the argmax of each window.

    Args:
        input: ``(N, C, H, W)``.
        grad_output: ``(N, C, H_out, W_out)``.
        kernel_size: As for ``F.max_pool2d``.
        stride: As for ``F.max_pool2d``; ``None`` means ``kernel_size``.
        padding: As for ``F.max_pool2d``.
        dilation: As for ``F.max_pool2d``.
        ceil_mode: As for ``F.max_pool2d``.
        indices: ``(N, C, H_out, W_out)``, the argmax from the forward pass
            (``F.max_pool2d(..., return_indices=True)``) if it was kept; searched again otherwise.

    Returns:
        ``(N, C, H, W)``.
    """
    if indices is None:
        kernel, strides, pads, dilations = _pool_config(kernel_size, stride, padding, dilation)
        if input.shape[1] >= CHANNELS_LAST_MIN_CHANNELS:
            # PyTorch's channels-last kernel vectorises over channels (several times faster here); it picks
            # the same element per window (first maximum, NaN wins) and returns the same (h*W + w) indices.
            input = input.contiguous(memory_format=torch.channels_last)
        _, indices = F.max_pool2d(input, kernel, strides, pads, dilations, ceil_mode, return_indices=True)
    return _scatter_to_argmax(input.shape, indices, grad_output)  # (N, C, H, W)


def _scatter_to_argmax(input_size: Sequence[int], argmax: Tensor, grad_output: Tensor) -> Tensor:
    """``dL/dX.flat[argmax] += dL/dY``.

    Args:
        input_size: ``(N, C, H, W)``.
        argmax: ``(N, C, H_out, W_out)``, flat indices ``h*W + w`` into each ``(H, W)`` plane.
        grad_output: ``(N, C, H_out, W_out)``.

    Returns:
        ``(N, C, H, W)``.
    """
    N, C, H, W = input_size
    grad = grad_output.new_zeros(N, C, H * W)  # (N, C, H*W)
    grad.scatter_add_(2, argmax.flatten(2), grad_output.flatten(2))  # sums windows sharing a maximum
    return grad.view(N, C, H, W)


def max_pool2d_argmax_reference(
    input: Tensor,
    output_size: Sequence[int],
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """The position of each window's maximum, with loops, breaking ties as PyTorch's CPU kernel.

    Args:
        input: ``(N, C, H, W)``.
        output_size: ``(H_out, W_out)`` (``ceil_mode`` only decides this).
        kernel_size: As for ``F.max_pool2d``.
        stride: As for ``F.max_pool2d``; ``None`` means ``kernel_size``.
        padding: As for ``F.max_pool2d``.
        dilation: As for ``F.max_pool2d``.

    Returns:
        ``(N, C, H_out, W_out)`` int64 flat indices ``h*W + w``.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pool_config(kernel_size, stride, padding, dilation)
    N, C, H, W = input.shape
    H_out, W_out = output_size
    require_small(H_out * W_out * kh * kw, "max_pool2d_grad_input")
    argmax = torch.zeros(N, C, H_out, W_out, dtype=torch.long, device=input.device)  # (N, C, H_out, W_out)
    for i in range(H_out):
        rows = [h for h in (i * sh - ph + a * dh for a in range(kh)) if 0 <= h < H]
        for j in range(W_out):
            cols = [w for w in (j * sw - pw + b * dw for b in range(kw)) if 0 <= w < W]
            best = input.new_full((N, C), -math.inf)  # (N, C)
            best_index = torch.full((N, C), rows[0] * W + cols[0], dtype=torch.long)  # (N, C) first position
            for h in rows:
                for w in cols:
                    value = input[:, :, h, w]  # (N, C)
                    better = (value > best) | value.isnan()  # strictly greater: the first maximum wins
                    best = torch.where(better, value, best)  # (N, C)
                    best_index = torch.where(better, h * W + w, best_index)  # (N, C)
            argmax[:, :, i, j] = best_index
    return argmax


def max_pool2d_grad_input_reference(
    input: Tensor,
    grad_output: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
) -> Tensor:
    """:func:`max_pool2d_grad_input` with loops: the argmax searched window by window, then added up.

    Args:
        input: ``(N, C, H, W)``.
        grad_output: ``(N, C, H_out, W_out)``.
        kernel_size: As for ``F.max_pool2d``.
        stride: As for ``F.max_pool2d``; ``None`` means ``kernel_size``.
        padding: As for ``F.max_pool2d``.
        dilation: As for ``F.max_pool2d``.
        ceil_mode: As for ``F.max_pool2d`` (fixes ``H_out``, ``W_out``, which ``grad_output`` has).

    Returns:
        ``(N, C, H, W)``.
    """
    H_out, W_out = grad_output.shape[-2:]
    argmax = max_pool2d_argmax_reference(input, (H_out, W_out), kernel_size, stride, padding, dilation)
    return _add_at_argmax_reference(input.shape, argmax, grad_output)


def _add_at_argmax_reference(input_size: Sequence[int], argmax: Tensor, grad_output: Tensor) -> Tensor:
    N, C, H, W = input_size
    H_out, W_out = grad_output.shape[-2:]
    grad = grad_output.new_zeros(N, C, H * W)  # (N, C, H*W)
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    grad[n, c, argmax[n, c, i, j]] += grad_output[n, c, i, j]
    return grad.view(N, C, H, W)


def max_pool2d_kinks(
    input: Tensor,
    output_size: Sequence[int],
    step: float,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """The input positions where moving one element by ``step`` can change a window's maximum.

    Element ``e`` of a window with largest values ``top1 >= top2`` is at a kink when
    ``e >= top1 - 2*step`` and ``top2 >= top1 - 2*step``; with ``step=0``, exactly the tied maxima.

    Args:
        input: ``(N, C, H, W)``.
        output_size: ``(H_out, W_out)``.
        step: The finite-difference step (``0`` for exact ties).
        kernel_size: As for ``F.max_pool2d``.
        stride: As for ``F.max_pool2d``; ``None`` means ``kernel_size``.
        padding: As for ``F.max_pool2d``.
        dilation: As for ``F.max_pool2d``.

    Returns:
        ``(N, C, H, W)`` bool.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pool_config(kernel_size, stride, padding, dilation)
    N, C, H, W = input.shape
    H_out, W_out = output_size
    if kh * kw < 2 or input.numel() == 0:
        return torch.zeros_like(input, dtype=torch.bool)
    Hn, Wn = (H_out - 1) * sh + (kh - 1) * dh + 1, (W_out - 1) * sw + (kw - 1) * dw + 1  # extent windows reach
    padded = F.pad(input, (pw, max(Wn - W - pw, 0), ph, max(Hn - H - ph, 0)), value=-math.inf)
    padded = padded[:, :, :Hn, :Wn]  # (N, C, Hn, Wn)
    windows = F.unfold(padded, (kh, kw), (dh, dw), 0, (sh, sw)).view(N, C, kh * kw, -1)  # (N, C, kk, L)
    top = windows.topk(2, dim=2).values  # (N, C, 2, L)
    threshold = top[:, :, :1] - 2 * step  # (N, C, 1, L)
    near = (windows >= threshold) & (top[:, :, 1:] >= threshold)  # (N, C, kk, L)
    counts = F.fold(near.to(input.dtype).view(N, C * kh * kw, -1), (Hn, Wn), (kh, kw), (dh, dw), 0, (sh, sw))
    counts = F.pad(counts, (0, max(W + pw - Wn, 0), 0, max(H + ph - Hn, 0)))  # (N, C, >= H + ph, >= W + pw)
    return counts[:, :, ph : ph + H, pw : pw + W] > 0  # (N, C, H, W)


def avg_pool2d_divisor(
    input_size: Sequence[int],
    output_size: Sequence[int],
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """The divisor ``D(i, j)`` PyTorch uses for each window of ``avg_pool2d``.

    A window starts at ``i*s - p`` and ends at ``min(start + k, L + p)`` (``ceil_mode`` windows are cut at
    the padded border); ``count_include_pad=True`` divides by that clipped size, ``False`` by the number
    of input elements in it, ``divisor_override`` replaces both.

    Args:
        input_size: ``(N, C, H, W)``.
        output_size: ``(H_out, W_out)``.
        kernel_size: As for ``F.avg_pool2d``.
        stride: As for ``F.avg_pool2d``; ``None`` means ``kernel_size``.
        padding: As for ``F.avg_pool2d``.
        count_include_pad: As for ``F.avg_pool2d``.
        divisor_override: As for ``F.avg_pool2d``.

    Returns:
        ``(H_out, W_out)`` float64.
    """
    kernel, strides, pads, _ = _pool_config(kernel_size, stride, padding, 1)
    sizes = []
    for length, out, k, s, p in zip(input_size[-2:], output_size, kernel, strides, pads):
        start = torch.arange(out, dtype=torch.float64) * s - p  # (out,)
        end = torch.clamp(start + k, max=length + p)  # (out,)
        if count_include_pad:
            sizes.append(end - start)  # (out,)
        else:
            sizes.append(end.clamp(max=length) - start.clamp(min=0))  # (out,)
    divisor = sizes[0][:, None] * sizes[1][None, :]  # (H_out, W_out)
    if divisor_override:
        return torch.full_like(divisor, float(divisor_override))
    return divisor


def avg_pool2d_grad_input(
    input_size: Sequence[int],
    grad_output: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """dL/dX of ``avg_pool2d``: every input of window ``(i, j)`` gets ``dL/dY[n, c, i, j] / D(i, j)``.

    ``dL/dY / D`` is added to the padded input once per kernel tap ``(a, b)``, at the rows
    ``a + i*s_h`` and columns ``b + j*s_w`` of all windows at once (a strided slice); overlapping windows
    sum. The padding is cut off at the end.

    Args:
        input_size: ``(N, C, H, W)``.
        grad_output: ``(N, C, H_out, W_out)``.
        kernel_size: As for ``F.avg_pool2d``.
        stride: As for ``F.avg_pool2d``; ``None`` means ``kernel_size``.
        padding: As for ``F.avg_pool2d``.
        ceil_mode: As for ``F.avg_pool2d`` (fixes ``H_out``, ``W_out``, which ``grad_output`` has).
        count_include_pad: As for ``F.avg_pool2d``.
        divisor_override: As for ``F.avg_pool2d``.

    Returns:
        ``(N, C, H, W)``.
    """
    (kh, kw), (sh, sw), (ph, pw), _ = _pool_config(kernel_size, stride, padding, 1)
    N, C, H, W = input_size
    H_out, W_out = grad_output.shape[-2:]
    divisor = avg_pool2d_divisor(
        input_size, (H_out, W_out), (kh, kw), (sh, sw), (ph, pw), count_include_pad, divisor_override
    ).to(grad_output)  # (H_out, W_out)
    share = grad_output / divisor  # (N, C, H_out, W_out)
    # The windows may stop short of the padded input's end (stride) or pass it (ceil_mode).
    Hn, Wn = max((H_out - 1) * sh + kh, ph + H), max((W_out - 1) * sw + kw, pw + W)
    grad_padded = grad_output.new_zeros(N, C, Hn, Wn)  # (N, C, Hn, Wn)
    for a in range(kh):
        for b in range(kw):
            grad_padded[:, :, a : a + (H_out - 1) * sh + 1 : sh, b : b + (W_out - 1) * sw + 1 : sw] += share
    if (ph, pw, Hn, Wn) == (0, 0, H, W):
        return grad_padded  # (N, C, H, W)
    return grad_padded[:, :, ph : ph + H, pw : pw + W].contiguous()  # (N, C, H, W)


def avg_pool2d_grad_input_reference(
    input_size: Sequence[int],
    grad_output: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """:func:`avg_pool2d_grad_input` with loops over windows and their elements.

    Args:
        input_size: ``(N, C, H, W)``.
        grad_output: ``(N, C, H_out, W_out)``.
        kernel_size: As for ``F.avg_pool2d``.
        stride: As for ``F.avg_pool2d``; ``None`` means ``kernel_size``.
        padding: As for ``F.avg_pool2d``.
        ceil_mode: As for ``F.avg_pool2d`` (fixes ``H_out``, ``W_out``, which ``grad_output`` has).
        count_include_pad: As for ``F.avg_pool2d``.
        divisor_override: As for ``F.avg_pool2d``.

    Returns:
        ``(N, C, H, W)``.
    """
    (kh, kw), (sh, sw), (ph, pw), _ = _pool_config(kernel_size, stride, padding, 1)
    N, C, H, W = input_size
    H_out, W_out = grad_output.shape[-2:]
    require_small(H_out * W_out * kh * kw, "avg_pool2d_grad_input")
    grad = grad_output.new_zeros(N, C, H, W)  # (N, C, H, W)
    for i in range(H_out):
        h_start, h_end = i * sh - ph, min(i * sh - ph + kh, H + ph)
        for j in range(W_out):
            w_start, w_end = j * sw - pw, min(j * sw - pw + kw, W + pw)
            rows = range(max(h_start, 0), min(h_end, H))
            cols = range(max(w_start, 0), min(w_end, W))
            if divisor_override:
                divisor = divisor_override
            elif count_include_pad:
                divisor = (h_end - h_start) * (w_end - w_start)
            else:
                divisor = len(rows) * len(cols)
            for h in rows:
                for w in cols:
                    grad[:, :, h, w] += grad_output[:, :, i, j] / divisor  # (N, C)
    return grad


def adaptive_windows(length: int, out: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` of each adaptive window: ``floor(i*L/out)`` to ``ceil((i+1)*L/out)``.

    Args:
        length: The input length ``L``.
        out: The output length.

    Returns:
        ``out`` pairs of ints.
    """
    return [((i * length) // out, -((-(i + 1) * length) // out)) for i in range(out)]


def _adaptive_average_matrix(length: int, out: int, like: Tensor) -> Tensor:
    """``A[i, l] = 1 / (end_i - start_i)`` for ``l`` in window ``i``, else 0, so that ``y = A x``.

    Returns:
        ``(out, length)``.
    """
    matrix = like.new_zeros(out, length)  # (out, L)
    for i, (start, end) in enumerate(adaptive_windows(length, out)):
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool2d_grad_input(input_size: Sequence[int], grad_output: Tensor) -> Tensor:
    """dL/dX of ``adaptive_avg_pool2d``: ``A_h^T dL/dY A_w`` with the averaging matrices of both axes.

    The pool is separable, ``Y = A_h X A_w^T`` per channel with ``A[i, l] = 1/|window i|`` on window ``i``,
    so each input of window ``(i, j)`` gets ``dL/dY[n, c, i, j] / (|window i| * |window j|)``.

    Args:
        input_size: ``(N, C, H, W)``.
        grad_output: ``(N, C, H_out, W_out)``.

    Returns:
        ``(N, C, H, W)``.
    """
    _, _, H, W = input_size
    H_out, W_out = grad_output.shape[-2:]
    a_h = _adaptive_average_matrix(H, H_out, grad_output)  # (H_out, H)
    a_w = _adaptive_average_matrix(W, W_out, grad_output)  # (W_out, W)
    return a_h.T @ grad_output @ a_w  # (N, C, H, W)


def adaptive_avg_pool2d_grad_input_reference(input_size: Sequence[int], grad_output: Tensor) -> Tensor:
    """:func:`adaptive_avg_pool2d_grad_input` with loops over windows and their elements.

    Args:
        input_size: ``(N, C, H, W)``.
        grad_output: ``(N, C, H_out, W_out)``.

    Returns:
        ``(N, C, H, W)``.
    """
    N, C, H, W = input_size
    H_out, W_out = grad_output.shape[-2:]
    require_small(H * W * max(H_out, 1) * max(W_out, 1), "adaptive_avg_pool2d_grad_input")
    grad = grad_output.new_zeros(N, C, H, W)  # (N, C, H, W)
    for i, (h_start, h_end) in enumerate(adaptive_windows(H, H_out)):
        for j, (w_start, w_end) in enumerate(adaptive_windows(W, W_out)):
            size = (h_end - h_start) * (w_end - w_start)
            for h in range(h_start, h_end):
                for w in range(w_start, w_end):
                    grad[:, :, h, w] += grad_output[:, :, i, j] / size  # (N, C)
    return grad


def adaptive_max_pool2d_grad_input(input: Tensor, grad_output: Tensor) -> Tensor:
    """dL/dX of ``adaptive_max_pool2d``: each window's dL/dY goes to the position of its maximum.

    Args:
        input: ``(N, C, H, W)``.
        grad_output: ``(N, C, H_out, W_out)``.

    Returns:
        ``(N, C, H, W)``.
    """
    _, argmax = F.adaptive_max_pool2d(input, grad_output.shape[-2:], return_indices=True)
    return _scatter_to_argmax(input.shape, argmax, grad_output)  # (N, C, H, W)


def adaptive_max_pool2d_argmax_reference(input: Tensor, output_size: Sequence[int]) -> Tensor:
    """The position of each adaptive window's maximum, with loops, ties as PyTorch's CPU kernel.

    Args:
        input: ``(N, C, H, W)``.
        output_size: ``(H_out, W_out)``.

    Returns:
        ``(N, C, H_out, W_out)`` int64 flat indices ``h*W + w``.
    """
    N, C, H, W = input.shape
    H_out, W_out = output_size
    require_small(H * W * max(H_out, 1) * max(W_out, 1), "adaptive_max_pool2d_grad_input")
    argmax = torch.zeros(N, C, H_out, W_out, dtype=torch.long, device=input.device)  # (N, C, H_out, W_out)
    for i, (h_start, h_end) in enumerate(adaptive_windows(H, H_out)):
        for j, (w_start, w_end) in enumerate(adaptive_windows(W, W_out)):
            best = input.new_full((N, C), -math.inf)  # (N, C)
            best_index = torch.full((N, C), h_start * W + w_start, dtype=torch.long)  # (N, C)
            for h in range(h_start, h_end):
                for w in range(w_start, w_end):
                    value = input[:, :, h, w]  # (N, C)
                    better = (value > best) | value.isnan()
                    best = torch.where(better, value, best)  # (N, C)
                    best_index = torch.where(better, h * W + w, best_index)  # (N, C)
            argmax[:, :, i, j] = best_index
    return argmax


def adaptive_max_pool2d_grad_input_reference(input: Tensor, grad_output: Tensor) -> Tensor:
    """:func:`adaptive_max_pool2d_grad_input` with loops.

    Args:
        input: ``(N, C, H, W)``.
        grad_output: ``(N, C, H_out, W_out)``.

    Returns:
        ``(N, C, H, W)``.
    """
    argmax = adaptive_max_pool2d_argmax_reference(input, grad_output.shape[-2:])
    return _add_at_argmax_reference(input.shape, argmax, grad_output)


def adaptive_max_pool2d_kinks(input: Tensor, output_size: Sequence[int], step: float) -> Tensor:
    """:func:`max_pool2d_kinks` for the adaptive windows.

    Args:
        input: ``(N, C, H, W)``.
        output_size: ``(H_out, W_out)``.
        step: The finite-difference step (``0`` for exact ties).

    Returns:
        ``(N, C, H, W)`` bool.
    """
    H, W = input.shape[-2:]
    kinks = torch.zeros_like(input, dtype=torch.bool)  # (N, C, H, W)
    for h_start, h_end in adaptive_windows(H, output_size[0]):
        for w_start, w_end in adaptive_windows(W, output_size[1]):
            window = input[:, :, h_start:h_end, w_start:w_end]  # (N, C, h, w)
            if window.numel() == 0 or window[0, 0].numel() < 2:
                continue
            top = window.flatten(2).topk(2, dim=2).values  # (N, C, 2)
            threshold = (top[:, :, 0] - 2 * step)[:, :, None, None]  # (N, C, 1, 1)
            near = (window >= threshold) & (top[:, :, 1, None, None] >= threshold)  # (N, C, h, w)
            kinks[:, :, h_start:h_end, w_start:w_end] |= near
    return kinks


# Rules: 1-d pools run as 2-d pools on a height of one.


_POOLS_1D = (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)


def _to_2d(module: nn.Module, x: Tensor, grad_output: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """A 1-d pool's ``(N, C, L)`` tensors as ``(N, C, 1, L)``; 2-d pools' tensors unchanged."""
    if isinstance(module, _POOLS_1D):
        return x.unsqueeze(2), None if grad_output is None else grad_output.unsqueeze(2)  # (N, C, 1, L)
    return x, grad_output


def _from_2d(module: nn.Module, grad: Tensor) -> Tensor:
    """Undoes :func:`_to_2d` on a gradient."""
    if isinstance(module, _POOLS_1D):
        return grad.squeeze(2)  # (N, C, L)
    return grad


def _max_pool_config(module: nn.MaxPool1d | nn.MaxPool2d) -> tuple:
    """``(kernel_size, stride, padding, dilation)`` of a max pool, as 2-d arguments."""
    if isinstance(module, nn.MaxPool1d):
        stride = module.stride if module.stride is not None else module.kernel_size
        return (
            (1, *expand_param(module.kernel_size, 1, "kernel_size")),
            (1, *expand_param(stride, 1, "stride")),
            (0, *expand_param(module.padding, 1, "padding")),
            (1, *expand_param(module.dilation, 1, "dilation")),
        )
    return module.kernel_size, module.stride, module.padding, module.dilation


def _max_pool_forward(module: nn.Module, x: Tensor, state: State) -> Tensor:
    pool = F.max_pool1d if isinstance(module, nn.MaxPool1d) else F.max_pool2d
    return pool(x, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)


def _max_pool_grads(module: nn.Module, x: Tensor, state: State, grad_output: Tensor, reference: bool) -> Grads:
    x2, g2 = _to_2d(module, x, grad_output)
    grad_input = max_pool2d_grad_input_reference if reference else max_pool2d_grad_input
    grad = grad_input(x2, g2, *_max_pool_config(module), module.ceil_mode)
    return {"input": _from_2d(module, grad)}


def _max_pool_kinks(module: nn.Module, x: Tensor, step: float) -> Tensor:
    output = _max_pool_forward(module, x, {})  # (N, C, [H_out,] W_out)
    x2, _ = _to_2d(module, x, None)
    output_size = (1, output.shape[-1]) if isinstance(module, nn.MaxPool1d) else output.shape[-2:]
    return _from_2d(module, max_pool2d_kinks(x2, output_size, step, *_max_pool_config(module)))


def _avg_pool_config(module: nn.AvgPool1d | nn.AvgPool2d) -> tuple:
    """``(kernel_size, stride, padding)`` of an average pool, as 2-d arguments."""
    if isinstance(module, nn.AvgPool1d):
        stride = module.stride if module.stride is not None else module.kernel_size
        return (
            (1, *expand_param(module.kernel_size, 1, "kernel_size")),
            (1, *expand_param(stride, 1, "stride")),
            (0, *expand_param(module.padding, 1, "padding")),
        )
    return module.kernel_size, module.stride, module.padding


def _avg_pool_forward(module: nn.Module, x: Tensor, state: State) -> Tensor:
    if isinstance(module, nn.AvgPool1d):
        return F.avg_pool1d(
            x, module.kernel_size, module.stride, module.padding, module.ceil_mode, module.count_include_pad
        )
    return F.avg_pool2d(
        x,
        module.kernel_size,
        module.stride,
        module.padding,
        module.ceil_mode,
        module.count_include_pad,
        module.divisor_override,
    )


def _avg_pool_grads(module: nn.Module, x: Tensor, state: State, grad_output: Tensor, reference: bool) -> Grads:
    x2, g2 = _to_2d(module, x, grad_output)
    grad_input = avg_pool2d_grad_input_reference if reference else avg_pool2d_grad_input
    divisor_override = getattr(module, "divisor_override", None)
    grad = grad_input(
        x2.shape, g2, *_avg_pool_config(module), module.ceil_mode, module.count_include_pad, divisor_override
    )
    return {"input": _from_2d(module, grad)}


def _adaptive_avg_forward(module: nn.Module, x: Tensor, state: State) -> Tensor:
    pool = F.adaptive_avg_pool1d if isinstance(module, nn.AdaptiveAvgPool1d) else F.adaptive_avg_pool2d
    return pool(x, module.output_size)


def _adaptive_avg_grads(
    module: nn.Module, x: Tensor, state: State, grad_output: Tensor, reference: bool
) -> Grads:
    x2, g2 = _to_2d(module, x, grad_output)
    grad_input = adaptive_avg_pool2d_grad_input_reference if reference else adaptive_avg_pool2d_grad_input
    return {"input": _from_2d(module, grad_input(x2.shape, g2))}


def _adaptive_max_forward(module: nn.AdaptiveMaxPool2d, x: Tensor, state: State) -> Tensor:
    return F.adaptive_max_pool2d(x, module.output_size)


def _adaptive_max_grads(
    module: nn.AdaptiveMaxPool2d, x: Tensor, state: State, grad_output: Tensor, reference: bool
) -> Grads:
    grad_input = adaptive_max_pool2d_grad_input_reference if reference else adaptive_max_pool2d_grad_input
    return {"input": grad_input(x, grad_output)}


def _adaptive_max_kinks(module: nn.AdaptiveMaxPool2d, x: Tensor, step: float) -> Tensor:
    return adaptive_max_pool2d_kinks(x, _adaptive_max_forward(module, x, {}).shape[-2:], step)



# --- formulas (LaTeX), shown by the Gradient checks page -----------------------------------------------------

def _pool_indices(dims: int) -> tuple[str, str, str, str]:
    """``(n_c, at, window, out)``: the LaTeX indices of an input element, its position, a window, an output."""
    return ("n,c,l", "l", "(i)", "i") if dims == 1 else ("n,c,h,w", "(h,w)", "(i,j)", "i,j")


def max_pool_formulas(dims: int, module: nn.Module | None = None) -> list[Formula]:
    """Max pooling (also adaptive): forward and input gradient in LaTeX."""
    n_c, at, window, out = _pool_indices(dims)
    return [
        Formula("forward", "Forward: the maximum of each window (ties: the first maximum in row-major order, as "
                           "PyTorch)",
                rf"Y_{{n,c,{out}}} = \max_{{{at} \in \mathcal{{W}}{window}}} X_{{{n_c}}}"),
        Formula("input", "Input gradient: each window's dL/dY goes only to the position of its maximum",
                rf"\frac{{\partial L}}{{\partial X_{{{n_c}}}}} = \sum_{{{window} \,:\, \arg\max \mathcal{{W}}{window}"
                rf" = {at}}} {DY}_{{n,c,{out}}}}}"),
    ]


def avg_pool_formulas(dims: int, module: nn.Module | None = None) -> list[Formula]:
    """Average pooling: forward and input gradient in LaTeX."""
    n_c, at, window, out = _pool_indices(dims)
    return [
        Formula("forward", "Forward: the mean of each window with PyTorch's divisor D (divisor_override, else the "
                           "window clipped to the padded input if count_include_pad, else to the input)",
                rf"Y_{{n,c,{out}}} = \frac{{1}}{{D{window}}} \sum_{{\cdot \in \mathcal{{W}}{window}}} X"),
        Formula("input", "Input gradient: every input of a window gets dL/dY divided by the divisor",
                rf"\frac{{\partial L}}{{\partial X_{{{n_c}}}}} = \sum_{{{window} \,:\, {at} \in \mathcal{{W}}{window}}}"
                rf" \frac{{1}}{{D{window}}}\, {DY}_{{n,c,{out}}}}}"),
    ]


def adaptive_avg_pool_formulas(dims: int, module: nn.Module | None = None) -> list[Formula]:
    """Adaptive average pooling: forward and input gradient in LaTeX."""
    n_c, at, window, out = _pool_indices(dims)
    return [
        Formula("forward", "Forward: window i covers rows floor(iH/H_out) to ceil((i+1)H/H_out) (exclusive)",
                r"Y_{n,c,i} = \frac{1}{|\mathcal{W}(i)|}\sum_{h=\lfloor iH/H_{out}\rfloor}"
                r"^{\lceil (i+1)H/H_{out}\rceil - 1} X_{n,c,h}\quad\text{(per spatial dimension)}"),
        Formula("input", "Input gradient",
                rf"\frac{{\partial L}}{{\partial X_{{{n_c}}}}} = \sum_{{{window} \,:\, {at} \in \mathcal{{W}}{window}}}"
                rf" \frac{{1}}{{|\mathcal{{W}}{window}|}}\, {DY}_{{n,c,{out}}}}}"),
    ]


MAX_POOL1D = Rule(
    name="MaxPool1d",
    forward=_max_pool_forward,
    fast=partial(_max_pool_grads, reference=False),
    reference=partial(_max_pool_grads, reference=True),
    input_ndims=(2, 3),
    unbatched_ndim=2,
    kinks=_max_pool_kinks,
    formulas=partial(max_pool_formulas, 1),
)

MAX_POOL2D = Rule(
    name="MaxPool2d",
    forward=_max_pool_forward,
    fast=partial(_max_pool_grads, reference=False),
    reference=partial(_max_pool_grads, reference=True),
    input_ndims=(3, 4),
    unbatched_ndim=3,
    kinks=_max_pool_kinks,
    formulas=partial(max_pool_formulas, 2),
)

AVG_POOL1D = Rule(
    name="AvgPool1d",
    forward=_avg_pool_forward,
    fast=partial(_avg_pool_grads, reference=False),
    reference=partial(_avg_pool_grads, reference=True),
    input_ndims=(2, 3),
    unbatched_ndim=2,
    formulas=partial(avg_pool_formulas, 1),
)

AVG_POOL2D = Rule(
    name="AvgPool2d",
    forward=_avg_pool_forward,
    fast=partial(_avg_pool_grads, reference=False),
    reference=partial(_avg_pool_grads, reference=True),
    input_ndims=(3, 4),
    unbatched_ndim=3,
    formulas=partial(avg_pool_formulas, 2),
)

ADAPTIVE_AVG_POOL1D = Rule(
    name="AdaptiveAvgPool1d",
    forward=_adaptive_avg_forward,
    fast=partial(_adaptive_avg_grads, reference=False),
    reference=partial(_adaptive_avg_grads, reference=True),
    input_ndims=(2, 3),
    unbatched_ndim=2,
    formulas=partial(adaptive_avg_pool_formulas, 1),
)

ADAPTIVE_AVG_POOL2D = Rule(
    name="AdaptiveAvgPool2d",
    forward=_adaptive_avg_forward,
    fast=partial(_adaptive_avg_grads, reference=False),
    reference=partial(_adaptive_avg_grads, reference=True),
    input_ndims=(3, 4),
    unbatched_ndim=3,
    formulas=partial(adaptive_avg_pool_formulas, 2),
)

ADAPTIVE_MAX_POOL2D = Rule(
    name="AdaptiveMaxPool2d",
    forward=_adaptive_max_forward,
    fast=partial(_adaptive_max_grads, reference=False),
    reference=partial(_adaptive_max_grads, reference=True),
    input_ndims=(3, 4),
    unbatched_ndim=3,
    kinks=_adaptive_max_kinks,
    formulas=partial(max_pool_formulas, 2),
)
