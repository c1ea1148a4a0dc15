"""Manual backward of the convolutions Conv1d, Conv2d and ConvTranspose2d, fast and with loops.

Notation (2-d; Conv1d is Conv2d with a height of one): input ``X`` of shape ``(N, C_in, H, W)``, weight ``W``
of shape ``(C_out, C_in/G, kH, kW)``, ``G`` groups, stride ``s``, dilation ``d``, and ``Xp`` the input padded by
``padding`` in ``padding_mode``. The forward pass is

    Y[n, k, i, j] = b[k] + sum_{c, a, b} W[k, c, a, b] * Xp[n, g(k)*C_in/G + c, i*s_h + a*d_h, j*s_w + b*d_w]

with ``g(k) = k // (C_out/G)`` the group of output channel ``k``. Its gradients are

    dL/db[k]          = sum_{n, i, j} dL/dY[n, k, i, j]
    dL/dW[k, c, a, b] = sum_{n, i, j} dL/dY[n, k, i, j] * Xp[n, g(k)*C_in/G + c, i*s_h + a*d_h, j*s_w + b*d_w]
                        (the cross-correlation of the input with dL/dY)
    dL/dXp            = the full convolution of dL/dY, dilated by the stride (s - 1 zeros between
                        neighbours), with the kernel rotated by 180 degrees: a transposed convolution

and ``dL/dX`` sums ``dL/dXp`` over the padded positions that copy each input position (none for zeros).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ManualGradError
from .rule import DXF, DY, DYF, Formula, Grads, Rule, State, expand_param, require_small

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def conv_padding(
    kernel_size: Sequence[int], dilation: Sequence[int], padding: int | Sequence[int] | str
) -> tuple[tuple[int, int], ...]:
    """The padding of each spatial dimension as ``(before, after)``, as ``nn.Conv2d`` applies it.

    ``'same'`` pads ``d*(k-1)`` in total, ``total // 2`` before and the rest after (PyTorch's choice for
    an odd total); ``'valid'`` pads nothing.

    Args:
        kernel_size: ``(kH, kW)`` (or ``(k,)``).
        dilation: One int per spatial dimension.
        padding: An int, one int per spatial dimension, ``'same'`` or ``'valid'``.

    Returns:
        One ``(before, after)`` pair per spatial dimension.

    Raises:
        ManualGradError: If ``padding`` is another string or has the wrong length.
    """
    n = len(kernel_size)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            totals = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise ManualGradError(f"padding={padding!r} must be an int, a tuple of ints, 'same' or 'valid'")
    return tuple((p, p) for p in expand_param(padding, n, "padding"))


def pad_input(input: Tensor, pads: Sequence[tuple[int, int]], padding_mode: str) -> Tensor:
    """Pads the spatial dimensions of a batched input as the convolution's forward pass does.

    Args:
        input: ``(N, C, H, W)``.
        pads: ``((top, bottom), (left, right))``.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Returns:
        ``(N, C, H + top + bottom, W + left + right)``.
    """
    (top, bottom), (left, right) = pads
    mode = "constant" if padding_mode == "zeros" else padding_mode
    return F.pad(input, (left, right, top, bottom), mode=mode)  # (N, C, Hp, Wp)


def pad_source_index(length: int, before: int, after: int, padding_mode: str) -> Tensor:
    """For each position of a padded dimension, the input position it copies (``-1`` for zero padding).

    Args:
        length: The unpadded length ``L``.
        before: Padding before.
        after: Padding after.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Returns:
        ``(before + L + after,)`` int64 indices into ``[0, L)``, or ``-1``.
    """
    i = torch.arange(-before, length + after)  # (Lp,) position relative to the unpadded start
    if padding_mode == "zeros":
        return torch.where((i >= 0) & (i < length), i, -1)  # (Lp,)
    if padding_mode == "reflect":
        i = torch.where(i < 0, -i, i)  # (Lp,) mirror at the first element, which is not repeated
        return torch.where(i >= length, 2 * (length - 1) - i, i)  # (Lp,)
    if padding_mode == "replicate":
        return i.clamp(0, length - 1)  # (Lp,)
    if padding_mode == "circular":
        return i.remainder(length)  # (Lp,)
    raise ManualGradError(f"padding_mode={padding_mode!r} must be one of {PADDING_MODES}")


def unpad_grad(grad_padded: Tensor, pads: Sequence[tuple[int, int]], padding_mode: str) -> Tensor:
    """The backward of :func:`pad_input`: each padded position's gradient goes to the position it copies.

    Args:
        grad_padded: ``(N, C, Hp, Wp)``, the gradient with respect to the padded input.
        pads: ``((top, bottom), (left, right))``.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Returns:
        ``(N, C, Hp - top - bottom, Wp - left - right)``.
    """
    (top, bottom), (left, right) = pads
    H = grad_padded.shape[2] - top - bottom
    W = grad_padded.shape[3] - left - right
    if padding_mode == "zeros":
        return grad_padded[:, :, top : top + H, left : left + W]  # (N, C, H, W)
    grad = grad_padded
    for dim, length, (before, after) in ((2, H, (top, bottom)), (3, W, (left, right))):
        source = pad_source_index(length, before, after, padding_mode).to(grad.device)  # (Lp,)
        shape = list(grad.shape)
        shape[dim] = length
        grad = grad.new_zeros(shape).index_add_(dim, source, grad)  # sums the copies of each position
    return grad  # (N, C, H, W)


def unpad_grad_reference(grad_padded: Tensor, pads: Sequence[tuple[int, int]], padding_mode: str) -> Tensor:
    """:func:`unpad_grad` with loops over rows and columns (the reference implementation).

    Args:
        grad_padded: ``(N, C, Hp, Wp)``.
        pads: ``((top, bottom), (left, right))``.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Returns:
        ``(N, C, Hp - top - bottom, Wp - left - right)``.
    """
    (top, bottom), (left, right) = pads
    N, C, Hp, Wp = grad_padded.shape
    H, W = Hp - top - bottom, Wp - left - right
    rows = pad_source_index(H, top, bottom, padding_mode).tolist()
    cols = pad_source_index(W, left, right, padding_mode).tolist()
    grad_rows = grad_padded.new_zeros(N, C, H, Wp)  # (N, C, H, Wp)
    for hp, h in enumerate(rows):
        if h >= 0:
            grad_rows[:, :, h, :] += grad_padded[:, :, hp, :]  # (N, C, Wp)
    grad = grad_padded.new_zeros(N, C, H, W)  # (N, C, H, W)
    for wp, w in enumerate(cols):
        if w >= 0:
            grad[:, :, :, w] += grad_rows[:, :, :, wp]  # (N, C, H)
    return grad


def _check_padding_mode(padding_mode: str) -> None:
    if padding_mode not in PADDING_MODES:
        raise ManualGradError(f"padding_mode={padding_mode!r} must be one of {PADDING_MODES}")


def _correlate_weight(
    input_cl: Tensor,
    grad_output: Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> Tensor:
    """``dW[k, c, a, b] = sum_{n,i,j} dY[n, k, i, j] * Xp[n, g(k)*C/G + c, i*s_h + a*d_h, j*s_w + b*d_w]``.

    One batched matrix product per kernel tap (one product per image, summed at the end) over the
    ``H_out*W_out`` positions, in channels-last layout. With stride one, the input rows a tap needs are a
    contiguous slice of each flattened padded image once ``dY`` is laid out with the padded width (zeros
    where no window starts), so no tap copies the input; a larger stride gathers each tap's rows.

    Args:
        input_cl: ``(N, Hp, Wp, C)``, the padded input, channels last.
        grad_output: ``(N, K, H_out, W_out)``.
        kernel_size: ``(kH, kW)``.
        stride: ``(s_h, s_w)``.
        dilation: ``(d_h, d_w)``.
        groups: ``G``; ``C`` and ``K`` are multiples of it.

    Returns:
        ``(K, C/G, kH, kW)``.
    """
    N, _, _, C = input_cl.shape
    K, H_out, W_out = grad_output.shape[1:]
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    Cg = C // groups
    if N == 0 or H_out == 0 or W_out == 0:
        return grad_output.new_zeros(K, Cg, kh, kw)
    # The windows never reach past these extents (rows a stride skips at the end stay unused).
    Hn, Wn = (H_out - 1) * sh + (kh - 1) * dh + 1, (W_out - 1) * sw + (kw - 1) * dw + 1
    x = input_cl[:, :Hn, :Wn, :].contiguous()  # (N, Hn, Wn, C)
    if (sh, sw) == (1, 1):
        g = F.pad(grad_output.permute(0, 2, 3, 1), (0, 0, 0, Wn - W_out))  # (N, H_out, Wn, K) zero columns
        rows = (H_out - 1) * Wn + W_out  # up to the last window's start; the rest of g is zero
        g = g.reshape(N, H_out * Wn, K)[:, :rows]  # (N, rows, K)
        x = x.view(N, Hn * Wn, C)  # (N, Hn*Wn, C)
        offsets = [a * dh * Wn + b * dw for a in range(kh) for b in range(kw)]  # the last slice ends at Hn*Wn
        tap_rows = [x[:, offset : offset + rows] for offset in offsets]  # kH*kW views of (N, rows, C)
    else:
        g = grad_output.permute(0, 2, 3, 1).reshape(N, H_out * W_out, K)  # (N, H_out*W_out, K)
        h_end, w_end = (H_out - 1) * sh + 1, (W_out - 1) * sw + 1
        tap_rows = (
            x[:, a * dh : a * dh + h_end : sh, b * dw : b * dw + w_end : sw].reshape(N, H_out * W_out, C)
            for a in range(kh)
            for b in range(kw)
        )  # kH*kW gathered copies of (N, H_out*W_out, C), one at a time
    if groups == 1:
        per_image = g.new_empty(kh * kw, N, K, C)  # (kH*kW, N, K, C)
        for tap, rows_of_tap in enumerate(tap_rows):
            torch.bmm(g.transpose(1, 2), rows_of_tap, out=per_image[tap])  # (N, K, C) one product per image
        return per_image.sum(dim=1).permute(1, 2, 0).reshape(K, C, kh, kw)  # (K, C, kH, kW)
    taps = [
        torch.einsum("nrgk,nrgc->gkc", g.view(N, -1, groups, K // groups), rows_of_tap.view(N, -1, groups, Cg))
        for rows_of_tap in tap_rows
    ]  # kH*kW of (G, K/G, C/G)
    return torch.stack(taps, dim=-1).reshape(K, Cg, kh, kw)  # (K, C/G, kH, kW)


def conv2d_grad_input(
    input_size: Sequence[int],
    weight: Tensor,
    grad_output: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
) -> Tensor:
    """dL/dX of ``conv2d``: the full convolution of dL/dY with the 180-degree-rotated kernel.

    ``dL/dXp[n, c, h, w] = sum_{k in group(c)} sum_{a, b} dL/dY[n, k, (h - a*d_h)/s_h, (w - b*d_w)/s_w]
    * W[k, c mod C_in/G, a, b]`` over the taps for which both indices are integers inside ``dL/dY``: the
    full convolution of the stride-dilated ``dL/dY`` with the 180-degree-rotated kernel. With stride one
    that is ``conv2d`` of ``dL/dY``, padded by ``d*(k-1)``, with the rotated kernel whose input and output
    channels are swapped; with a larger stride it is ``conv_transpose2d`` with the same weight, whose
    ``output_padding`` restores the rows and columns of ``Xp`` that no window reaches. Then the padding is
    undone (:func:`unpad_grad`).

    Args:
        input_size: ``(N, C_in, H, W)``.
        weight: ``(C_out, C_in/G, kH, kW)``.
        grad_output: ``(N, C_out, H_out, W_out)``.
        stride: As for ``F.conv2d``.
        padding: As for ``nn.Conv2d``: int, pair, ``'same'`` or ``'valid'``.
        dilation: As for ``F.conv2d``.
        groups: As for ``F.conv2d``.
        padding_mode: As for ``nn.Conv2d``.

    Returns:
        ``(N, C_in, H, W)``.
    """
    _check_padding_mode(padding_mode)
    _, C, H, W = input_size
    K, Cg, kh, kw = weight.shape
    sh, sw = expand_param(stride, 2, "stride")
    dh, dw = expand_param(dilation, 2, "dilation")
    (top, bottom), (left, right) = pads = conv_padding((kh, kw), (dh, dw), padding)
    Hp, Wp = H + top + bottom, W + left + right
    # Zero padding common to both sides is never materialised: the gradient is computed without it.
    ph, pw = (min(top, bottom), min(left, right)) if padding_mode == "zeros" else (0, 0)
    eh, ew = dh * (kh - 1), dw * (kw - 1)
    if (sh, sw) == (1, 1) and eh >= ph and ew >= pw:
        rotated = (
            weight.view(groups, K // groups, Cg, kh, kw).transpose(1, 2).reshape(C, K // groups, kh, kw).flip(-2, -1)
        )  # (C_in, C_out/G, kH, kW)
        padding_full = (eh - ph, ew - pw)  # "full": every tap of every window, minus the common zero padding
        grad = F.conv2d(grad_output, rotated, None, 1, padding_full, (dh, dw), groups)  # (N, C_in, Hp - 2ph, Wp - 2pw)
    else:
        # Rows and columns of the padded input after the last window (the stride skipped them).
        output_padding = ((Hp - eh - 1) % sh, (Wp - ew - 1) % sw)
        grad = F.conv_transpose2d(
            grad_output, weight, None, (sh, sw), (ph, pw), output_padding, groups, (dh, dw)
        )  # (N, C_in, Hp - 2ph, Wp - 2pw)
    if padding_mode == "zeros":
        return grad[:, :, top - ph : top - ph + H, left - pw : left - pw + W]  # (N, C_in, H, W)
    return unpad_grad(grad, pads, padding_mode)  # (N, C_in, H, W)


def conv2d_grad_weight(
    input: Tensor,
    weight_size: Sequence[int],
    grad_output: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
) -> Tensor:
    """dL/dW of ``conv2d``: the cross-correlation of the padded input with dL/dY.

    ``dL/dW[k, c, a, b] = sum_{n, i, j} dL/dY[n, k, i, j] * Xp[n, g(k)*C_in/G + c, i*s_h + a*d_h, j*s_w + b*d_w]``,
    computed as one matrix product per kernel tap (see :func:`_correlate_weight`).

    Args:
        input: ``(N, C_in, H, W)``.
        weight_size: ``(C_out, C_in/G, kH, kW)``.
        grad_output: ``(N, C_out, H_out, W_out)``.
        stride: As for ``F.conv2d``.
        padding: As for ``nn.Conv2d``: int, pair, ``'same'`` or ``'valid'``.
        dilation: As for ``F.conv2d``.
        groups: As for ``F.conv2d``.
        padding_mode: As for ``nn.Conv2d``.

    Returns:
        ``(C_out, C_in/G, kH, kW)``.
    """
    _check_padding_mode(padding_mode)
    kh, kw = weight_size[-2:]
    dilation2 = expand_param(dilation, 2, "dilation")
    (top, bottom), (left, right) = pads = conv_padding((kh, kw), dilation2, padding)
    if padding_mode == "zeros":
        # Padding and the channels-last copy in one pass.
        input_cl = F.pad(input.permute(0, 2, 3, 1), (0, 0, left, right, top, bottom))  # (N, Hp, Wp, C_in)
    else:
        input_cl = pad_input(input, pads, padding_mode).permute(0, 2, 3, 1)  # (N, Hp, Wp, C_in)
    return _correlate_weight(
        input_cl, grad_output, (kh, kw), expand_param(stride, 2, "stride"), dilation2, groups
    )  # (C_out, C_in/G, kH, kW)


def conv2d_grad_bias(grad_output: Tensor) -> Tensor:
    """dL/db of ``conv2d``: ``dL/db[k] = sum_{n, i, j} dL/dY[n, k, i, j]``.

    Args:
        grad_output: ``(N, C_out, H_out, W_out)``.

    Returns:
        ``(C_out,)``.
    """
    return grad_output.sum(dim=(0, 2, 3))  # (C_out,)


def conv2d_grad_input_reference(
    input_size: Sequence[int],
    weight: Tensor,
    grad_output: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
) -> Tensor:
    """:func:`conv2d_grad_input` transcribed with loops: a full convolution with the rotated kernel.

    1. Dilate dL/dY by the stride (``s - 1`` zeros between neighbours). 2. Pad it by the dilated kernel
    extent minus one, ``d*(k-1)``, on every side. 3. Cross-correlate with the kernel rotated by 180 degrees:
    ``dL/dXp[n, c, h, w] = sum_{k, a, b} full[n, k, h + a*d_h, w + b*d_w] * rot[k, c, a, b]``.

    Args:
        input_size: ``(N, C_in, H, W)``.
        weight: ``(C_out, C_in/G, kH, kW)``.
        grad_output: ``(N, C_out, H_out, W_out)``.
        stride: As for ``F.conv2d``.
        padding: As for ``nn.Conv2d``.
        dilation: As for ``F.conv2d``.
        groups: As for ``F.conv2d``.
        padding_mode: As for ``nn.Conv2d``.

    Returns:
        ``(N, C_in, H, W)``.
    """
    _check_padding_mode(padding_mode)
    N, C, H, W = input_size
    K, Cg, kh, kw = weight.shape
    G, Kg = groups, K // groups
    H_out, W_out = grad_output.shape[-2:]
    sh, sw = expand_param(stride, 2, "stride")
    dh, dw = expand_param(dilation, 2, "dilation")
    (top, bottom), (left, right) = pads = conv_padding((kh, kw), (dh, dw), padding)
    Hp, Wp = H + top + bottom, W + left + right
    eh, ew = dh * (kh - 1), dw * (kw - 1)
    Hf, Wf = (H_out - 1) * sh + 1 + eh, (W_out - 1) * sw + 1 + ew  # the rows/columns windows reach
    require_small(Hf * Wf * kh * kw, "conv2d_grad_input")
    dilated = grad_output.new_zeros(N, K, (H_out - 1) * sh + 1, (W_out - 1) * sw + 1)  # (N, K, Hd, Wd)
    dilated[:, :, ::sh, ::sw] = grad_output
    full = F.pad(dilated, (ew, ew, eh, eh)).view(N, G, Kg, Hf + eh, Wf + ew)  # (N, G, K/G, Hd + 2eh, Wd + 2ew)
    rotated = weight.flip(-2, -1).view(G, Kg, Cg, kh, kw)  # (G, K/G, C/G, kH, kW)
    grad_padded = grad_output.new_zeros(N, G, Cg, Hp, Wp)  # (N, G, C/G, Hp, Wp)
    for h in range(Hf):
        for w in range(Wf):
            for a in range(kh):
                for b in range(kw):
                    grad_padded[:, :, :, h, w] += torch.einsum(
                        "ngk,gkc->ngc", full[:, :, :, h + a * dh, w + b * dw], rotated[:, :, :, a, b]
                    )  # (N, G, C/G)
    return unpad_grad_reference(grad_padded.view(N, C, Hp, Wp), pads, padding_mode)  # (N, C_in, H, W)


def conv2d_grad_weight_reference(
    input: Tensor,
    weight_size: Sequence[int],
    grad_output: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
) -> Tensor:
    """:func:`conv2d_grad_weight` transcribed with loops over kernel taps and output positions.

    Args:
        input: ``(N, C_in, H, W)``.
        weight_size: ``(C_out, C_in/G, kH, kW)``.
        grad_output: ``(N, C_out, H_out, W_out)``.
        stride: As for ``F.conv2d``.
        padding: As for ``nn.Conv2d``.
        dilation: As for ``F.conv2d``.
        groups: As for ``F.conv2d``.
        padding_mode: As for ``nn.Conv2d``.

    Returns:
        ``(C_out, C_in/G, kH, kW)``.
    """
    _check_padding_mode(padding_mode)
    K, Cg, kh, kw = weight_size
    N, C = input.shape[:2]
    G, Kg = groups, K // groups
    H_out, W_out = grad_output.shape[-2:]
    sh, sw = expand_param(stride, 2, "stride")
    dh, dw = expand_param(dilation, 2, "dilation")
    padded = pad_input(input, conv_padding((kh, kw), (dh, dw), padding), padding_mode)  # (N, C, Hp, Wp)
    require_small(kh * kw * H_out * W_out, "conv2d_grad_weight")
    xg = padded.view(N, G, Cg, *padded.shape[-2:])  # (N, G, C/G, Hp, Wp)
    gg = grad_output.view(N, G, Kg, H_out, W_out)  # (N, G, K/G, H_out, W_out)
    grad = grad_output.new_zeros(G, Kg, Cg, kh, kw)  # (G, K/G, C/G, kH, kW)
    for a in range(kh):
        for b in range(kw):
            for i in range(H_out):
                for j in range(W_out):
                    grad[:, :, :, a, b] += torch.einsum(
                        "ngk,ngc->gkc", gg[:, :, :, i, j], xg[:, :, :, i * sh + a * dh, j * sw + b * dw]
                    )  # (G, K/G, C/G)
    return grad.view(K, Cg, kh, kw)


def conv2d_grad_bias_reference(grad_output: Tensor) -> Tensor:
    """:func:`conv2d_grad_bias` with a loop over output positions.

    Args:
        grad_output: ``(N, C_out, H_out, W_out)``.

    Returns:
        ``(C_out,)``.
    """
    H_out, W_out = grad_output.shape[-2:]
    grad = grad_output.new_zeros(grad_output.shape[1])  # (C_out,)
    for i in range(H_out):
        for j in range(W_out):
            grad += grad_output[:, :, i, j].sum(dim=0)  # (C_out,)
    return grad


def conv_transpose2d_grad_input(
    input_size: Sequence[int],
    weight: Tensor,
    grad_output: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """dL/dX of ``conv_transpose2d``: a plain convolution of dL/dY with the same weight.

    Duality: ``conv_transpose2d(., W)`` is the adjoint of ``conv2d(., W)`` with the same stride, padding,
    dilation and groups, so ``<dL/dY, conv_transpose2d(X, W)> = <conv2d(dL/dY, W), X>`` and
    ``dL/dX = conv2d(dL/dY, W)``. ``output_padding`` only adds rows the convolution may turn into extra
    outputs; they are cropped.

    Args:
        input_size: ``(N, C_in, H, W)``.
        weight: ``(C_in, C_out/G, kH, kW)``.
        grad_output: ``(N, C_out, H_out, W_out)``.
        stride: As for ``F.conv_transpose2d``.
        padding: As for ``F.conv_transpose2d``.
        output_padding: As for ``F.conv_transpose2d``.
        groups: As for ``F.conv_transpose2d``.
        dilation: As for ``F.conv_transpose2d``.

    Returns:
        ``(N, C_in, H, W)``.
    """
    _, _, H, W = input_size
    grad = F.conv2d(grad_output, weight, None, stride, padding, dilation, groups)  # (N, C_in, >=H, >=W)
    return grad[:, :, :H, :W]  # (N, C_in, H, W)


def conv_transpose2d_grad_weight(
    input: Tensor,
    weight_size: Sequence[int],
    grad_output: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """dL/dW of ``conv_transpose2d``: the convolution weight gradient with input and dL/dY swapped.

    ``dL/dW[c, k, a, b] = sum_{n, i, j} X[n, c, i, j] * dL/dYp[n, g(c)*C_out/G + k, i*s_h + a*d_h, j*s_w + b*d_w]``
    with ``dL/dYp`` the output gradient zero-padded by ``padding``: by the duality above, the weight
    gradient of ``conv2d`` applied to input ``dL/dY`` with output gradient ``X``.

    Args:
        input: ``(N, C_in, H, W)``.
        weight_size: ``(C_in, C_out/G, kH, kW)``.
        grad_output: ``(N, C_out, H_out, W_out)``.
        stride: As for ``F.conv_transpose2d``.
        padding: As for ``F.conv_transpose2d``.
        output_padding: As for ``F.conv_transpose2d`` (the extra rows get no window).
        groups: As for ``F.conv_transpose2d``.
        dilation: As for ``F.conv_transpose2d``.

    Returns:
        ``(C_in, C_out/G, kH, kW)``.
    """
    kh, kw = weight_size[-2:]
    ph, pw = expand_param(padding, 2, "padding")
    grad_cl = F.pad(grad_output.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # (N, H_out + 2ph, W_out + 2pw, C_out)
    return _correlate_weight(
        grad_cl, input, (kh, kw), expand_param(stride, 2, "stride"), expand_param(dilation, 2, "dilation"), groups
    )  # (C_in, C_out/G, kH, kW)


def conv_transpose2d_grad_input_reference(
    input_size: Sequence[int],
    weight: Tensor,
    grad_output: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """:func:`conv_transpose2d_grad_input` with loops: ``dL/dX[n, c, i, j] = sum_{k, a, b} W[c, k, a, b] *
    dL/dYp[n, g(c)*C_out/G + k, i*s_h + a*d_h, j*s_w + b*d_w]``.

    Args:
        input_size: ``(N, C_in, H, W)``.
        weight: ``(C_in, C_out/G, kH, kW)``.
        grad_output: ``(N, C_out, H_out, W_out)``.
        stride: As for ``F.conv_transpose2d``.
        padding: As for ``F.conv_transpose2d``.
        output_padding: As for ``F.conv_transpose2d``.
        groups: As for ``F.conv_transpose2d``.
        dilation: As for ``F.conv_transpose2d``.

    Returns:
        ``(N, C_in, H, W)``.
    """
    N, C, H, W = input_size
    _, Kg, kh, kw = weight.shape
    G, Cg = groups, C // groups
    sh, sw = expand_param(stride, 2, "stride")
    ph, pw = expand_param(padding, 2, "padding")
    dh, dw = expand_param(dilation, 2, "dilation")
    require_small(H * W * kh * kw, "conv_transpose2d_grad_input")
    padded = F.pad(grad_output, (pw, pw, ph, ph))  # (N, C_out, H_out + 2ph, W_out + 2pw)
    yg = padded.view(N, G, Kg, *padded.shape[-2:])  # (N, G, C_out/G, Hq, Wq)
    wg = weight.view(G, Cg, Kg, kh, kw)  # (G, C_in/G, C_out/G, kH, kW)
    grad = grad_output.new_zeros(N, G, Cg, H, W)  # (N, G, C_in/G, H, W)
    for i in range(H):
        for j in range(W):
            for a in range(kh):
                for b in range(kw):
                    grad[:, :, :, i, j] += torch.einsum(
                        "ngk,gck->ngc", yg[:, :, :, i * sh + a * dh, j * sw + b * dw], wg[:, :, :, a, b]
                    )  # (N, G, C_in/G)
    return grad.view(N, C, H, W)


def conv_transpose2d_grad_weight_reference(
    input: Tensor,
    weight_size: Sequence[int],
    grad_output: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """:func:`conv_transpose2d_grad_weight` with loops over kernel taps and input positions.

    Args:
        input: ``(N, C_in, H, W)``.
        weight_size: ``(C_in, C_out/G, kH, kW)``.
        grad_output: ``(N, C_out, H_out, W_out)``.
        stride: As for ``F.conv_transpose2d``.
        padding: As for ``F.conv_transpose2d``.
        output_padding: As for ``F.conv_transpose2d``.
        groups: As for ``F.conv_transpose2d``.
        dilation: As for ``F.conv_transpose2d``.

    Returns:
        ``(C_in, C_out/G, kH, kW)``.
    """
    C, Kg, kh, kw = weight_size
    N, _, H, W = input.shape
    G, Cg = groups, C // groups
    sh, sw = expand_param(stride, 2, "stride")
    ph, pw = expand_param(padding, 2, "padding")
    dh, dw = expand_param(dilation, 2, "dilation")
    require_small(kh * kw * H * W, "conv_transpose2d_grad_weight")
    padded = F.pad(grad_output, (pw, pw, ph, ph))  # (N, C_out, H_out + 2ph, W_out + 2pw)
    yg = padded.view(N, G, Kg, *padded.shape[-2:])  # (N, G, C_out/G, Hq, Wq)
    xg = input.view(N, G, Cg, H, W)  # (N, G, C_in/G, H, W)
    grad = grad_output.new_zeros(G, Cg, Kg, kh, kw)  # (G, C_in/G, C_out/G, kH, kW)
    for a in range(kh):
        for b in range(kw):
            for i in range(H):
                for j in range(W):
                    grad[:, :, :, a, b] += torch.einsum(
                        "ngc,ngk->gck", xg[:, :, :, i, j], yg[:, :, :, i * sh + a * dh, j * sw + b * dw]
                    )  # (G, C_in/G, C_out/G)
    return grad.view(C, Kg, kh, kw)


def conv1d_grad_input(
    input_size: Sequence[int],
    weight: Tensor,
    grad_output: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    reference: bool = False,
) -> Tensor:
    """dL/dX of ``conv1d``: :func:`conv2d_grad_input` on a height of one.

    Args:
        input_size: ``(N, C_in, L)``.
        weight: ``(C_out, C_in/G, k)``.
        grad_output: ``(N, C_out, L_out)``.
        stride: As for ``F.conv1d``.
        padding: As for ``nn.Conv1d``: int, ``'same'`` or ``'valid'``.
        dilation: As for ``F.conv1d``.
        groups: As for ``F.conv1d``.
        padding_mode: As for ``nn.Conv1d``.
        reference: Use the loop implementation.

    Returns:
        ``(N, C_in, L)``.
    """
    N, C, L = input_size
    grad_input = conv2d_grad_input_reference if reference else conv2d_grad_input
    return grad_input(
        (N, C, 1, L),
        weight.unsqueeze(2),  # (C_out, C_in/G, 1, k)
        grad_output.unsqueeze(2),  # (N, C_out, 1, L_out)
        (1, *expand_param(stride, 1, "stride")),
        _padding_1d(padding),
        (1, *expand_param(dilation, 1, "dilation")),
        groups,
        padding_mode=padding_mode,
    ).squeeze(2)  # (N, C_in, L)


def conv1d_grad_weight(
    input: Tensor,
    weight_size: Sequence[int],
    grad_output: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    reference: bool = False,
) -> Tensor:
    """dL/dW of ``conv1d``: :func:`conv2d_grad_weight` on a height of one.

    Args:
        input: ``(N, C_in, L)``.
        weight_size: ``(C_out, C_in/G, k)``.
        grad_output: ``(N, C_out, L_out)``.
        stride: As for ``F.conv1d``.
        padding: As for ``nn.Conv1d``: int, ``'same'`` or ``'valid'``.
        dilation: As for ``F.conv1d``.
        groups: As for ``F.conv1d``.
        padding_mode: As for ``nn.Conv1d``.
        reference: Use the loop implementation.

    Returns:
        ``(C_out, C_in/G, k)``.
    """
    K, Cg, k = weight_size
    grad_weight = conv2d_grad_weight_reference if reference else conv2d_grad_weight
    return grad_weight(
        input.unsqueeze(2),  # (N, C_in, 1, L)
        (K, Cg, 1, k),
        grad_output.unsqueeze(2),  # (N, C_out, 1, L_out)
        (1, *expand_param(stride, 1, "stride")),
        _padding_1d(padding),
        (1, *expand_param(dilation, 1, "dilation")),
        groups,
        padding_mode=padding_mode,
    ).squeeze(2)  # (C_out, C_in/G, k)


def _padding_1d(padding: int | Sequence[int] | str) -> tuple[int, int] | str:
    if isinstance(padding, str):
        return padding  # 'same' pads nothing along the added height of one
    return (0, *expand_param(padding, 1, "padding"))


def _check_in_channels(module: nn.Module, x: Tensor) -> None:
    channels = x.shape[-3] if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) else x.shape[-2]
    if channels != module.in_channels:
        raise ManualGradError(
            f"{module!r} expects in_channels={module.in_channels} input channels, but the input of shape "
            f"{tuple(x.shape)} has {channels}"
        )


def _conv_forward(module: nn.Module, x: Tensor, state: State) -> Tensor:
    conv = F.conv2d if isinstance(module, nn.Conv2d) else F.conv1d
    if module.padding_mode == "zeros":
        return conv(x, state["weight"], state["bias"], module.stride, module.padding, module.dilation, module.groups)
    pads = conv_padding(module.kernel_size, module.dilation, module.padding)
    flat = [p for before_after in reversed(pads) for p in before_after]  # F.pad order: last dimension first
    padded = F.pad(x, flat, mode=module.padding_mode)  # (N, C_in, *padded spatial)
    return conv(padded, state["weight"], state["bias"], module.stride, 0, module.dilation, module.groups)


def _conv2d_grads(module: nn.Conv2d, x: Tensor, state: State, grad_output: Tensor, reference: bool) -> Grads:
    grad_input, grad_weight, grad_bias = (
        (conv2d_grad_input_reference, conv2d_grad_weight_reference, conv2d_grad_bias_reference)
        if reference
        else (conv2d_grad_input, conv2d_grad_weight, conv2d_grad_bias)
    )
    weight = state["weight"]
    config = (module.stride, module.padding, module.dilation, module.groups)
    return {
        "input": grad_input(x.shape, weight, grad_output, *config, padding_mode=module.padding_mode),
        "weight": grad_weight(x, weight.shape, grad_output, *config, padding_mode=module.padding_mode),
        "bias": None if state["bias"] is None else grad_bias(grad_output),
    }


def _conv1d_grads(module: nn.Conv1d, x: Tensor, state: State, grad_output: Tensor, reference: bool) -> Grads:
    weight = state["weight"]
    config = (module.stride, module.padding, module.dilation, module.groups)
    bias_grad = conv2d_grad_bias_reference if reference else conv2d_grad_bias
    return {
        "input": conv1d_grad_input(
            x.shape, weight, grad_output, *config, padding_mode=module.padding_mode, reference=reference
        ),
        "weight": conv1d_grad_weight(
            x, weight.shape, grad_output, *config, padding_mode=module.padding_mode, reference=reference
        ),
        "bias": None if state["bias"] is None else bias_grad(grad_output.unsqueeze(2)),
    }


def _conv_transpose2d_forward(module: nn.ConvTranspose2d, x: Tensor, state: State) -> Tensor:
    return F.conv_transpose2d(
        x,
        state["weight"],
        state["bias"],
        module.stride,
        module.padding,
        module.output_padding,
        module.groups,
        module.dilation,
    )


def _conv_transpose2d_grads(
    module: nn.ConvTranspose2d, x: Tensor, state: State, grad_output: Tensor, reference: bool
) -> Grads:
    grad_input, grad_weight, grad_bias = (
        (conv_transpose2d_grad_input_reference, conv_transpose2d_grad_weight_reference, conv2d_grad_bias_reference)
        if reference
        else (conv_transpose2d_grad_input, conv_transpose2d_grad_weight, conv2d_grad_bias)
    )
    weight = state["weight"]
    config = (module.stride, module.padding, module.output_padding, module.groups, module.dilation)
    return {
        "input": grad_input(x.shape, weight, grad_output, *config),
        "weight": grad_weight(x, weight.shape, grad_output, *config),
        "bias": None if state["bias"] is None else grad_bias(grad_output),
    }


def _validate_conv_transpose2d(module: nn.ConvTranspose2d, x: Tensor) -> None:
    if module.padding_mode != "zeros":
        raise ManualGradError(f"padding_mode={module.padding_mode!r}: ConvTranspose2d supports only 'zeros'")
    _check_in_channels(module, x)



# --- formulas (LaTeX), shown by the Gradient checks and Kernel heatmaps pages --------------------------------

_CONV_XP = r"X^{p}_{n,\; g(k)\frac{C_{in}}{G} + c,\; s_h i + d_h a,\; s_w j + d_w b}"


def conv_formulas(dims: int, module: nn.Module | None = None) -> list[Formula]:
    """The forward pass and the gradients of a ``dims``-d convolution, in LaTeX (the rules above compute them)."""
    one_d = dims == 1
    xp = _CONV_XP.replace(r",\; s_w j + d_w b", "") if one_d else _CONV_XP
    idx, kdx, pos = ("n,k,i", "k,c,a", "i") if one_d else ("n,k,i,j", "k,c,a,b", "i,j")
    return [
        Formula("forward", "Forward (X^p: the input padded by padding in padding_mode; g(k): the group of output "
                           "channel k)",
                rf"Y_{{{idx}}} = b_k + \sum_{{c,a{'' if one_d else ',b'}}} W_{{{kdx}}}\, {xp}"),
        Formula("bias", "Bias gradient", rf"\frac{{\partial L}}{{\partial b_k}} = \sum_{{n,{pos}}} {DY}_{{{idx}}}}}"),
        Formula("weight", "Weight gradient: the cross-correlation of the padded input with dL/dY",
                rf"\frac{{\partial L}}{{\partial W_{{{kdx}}}}} = \sum_{{n,{pos}}} {DY}_{{{idx}}}}}\, {xp}"
                rf"\qquad \frac{{\partial L}}{{\partial W}} = X^{{p}} \star {DYF}"),
        Formula("input", "Input gradient: the full convolution of dL/dY (dilated by the stride) with the "
                         "180°-rotated kernel, i.e. a transposed convolution; then the padding's backward (crop for "
                         "zeros, add the copies back for reflect / replicate / circular)",
                rf"\frac{{\partial L}}{{\partial X^{{p}}}} = \operatorname{{rot}}_{{180}}(W) \ast "
                rf"\operatorname{{dilate}}_s\!\Big({DYF}\Big) = \operatorname{{conv\_transpose}}\Big({DYF}, W\Big),"
                r"\qquad \frac{\partial L}{\partial X_{h}} = \sum_{h' \,:\, \mathrm{src}(h') = h}"
                r"\frac{\partial L}{\partial X^{p}_{h'}}"),
    ]


def conv_transpose_formulas(module: nn.Module | None = None) -> list[Formula]:
    """The forward pass and the gradients of a 2-d transposed convolution, in LaTeX."""
    return [
        Formula("forward", "Forward: the adjoint of Conv2d with the same weight, stride, padding, dilation and groups",
                r"Y = \operatorname{conv\_transpose}(X, W) + b, \qquad "
                r"\langle \operatorname{conv\_transpose}(X, W), Z\rangle = \langle X, \operatorname{conv}(Z, W)\rangle"),
        Formula("bias", "Bias gradient", rf"\frac{{\partial L}}{{\partial b_k}} = \sum_{{n,i,j}} {DY}_{{n,k,i,j}}}}"),
        Formula("weight", "Weight gradient (dL/dY^p: dL/dY zero-padded by padding)",
                r"\frac{\partial L}{\partial W_{c,k,a,b}} = \sum_{n,i,j} X_{n,c,i,j}\;"
                r"\frac{\partial L}{\partial Y^{p}_{n,\; g(c)\frac{C_{out}}{G} + k,\; s_h i + d_h a,\; s_w j + d_w b}}"),
        Formula("input", "Input gradient: a plain convolution of dL/dY with the same weight",
                rf"{DXF} = \operatorname{{conv}}\Big({DYF}, W\Big)"),
    ]


CONV1D = Rule(
    name="Conv1d",
    forward=_conv_forward,
    fast=partial(_conv1d_grads, reference=False),
    reference=partial(_conv1d_grads, reference=True),
    params=("weight", "bias"),
    input_ndims=(2, 3),
    unbatched_ndim=2,
    validate=_check_in_channels,
    formulas=partial(conv_formulas, 1),
)

CONV2D = Rule(
    name="Conv2d",
    forward=_conv_forward,
    fast=partial(_conv2d_grads, reference=False),
    reference=partial(_conv2d_grads, reference=True),
    params=("weight", "bias"),
    input_ndims=(3, 4),
    unbatched_ndim=3,
    validate=_check_in_channels,
    formulas=partial(conv_formulas, 2),
)

CONV_TRANSPOSE2D = Rule(
    name="ConvTranspose2d",
    forward=_conv_transpose2d_forward,
    fast=partial(_conv_transpose2d_grads, reference=False),
    reference=partial(_conv_transpose2d_grads, reference=True),
    params=("weight", "bias"),
    input_ndims=(3, 4),
    unbatched_ndim=3,
    validate=_validate_conv_transpose2d,
    formulas=conv_transpose_formulas,
)
