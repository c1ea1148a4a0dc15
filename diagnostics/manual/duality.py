"""Shape arithmetic of convolutions and the transposed-convolution duality, checked against autograd.

A transposed convolution with a convolution's weight is that convolution's input-gradient (its adjoint):
:func:`transpose_duality` builds the ``ConvTranspose`` that maps a convolution's output back to its input's
shape and measures how far its forward is from autograd's ``dL/dX``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import LayerOptionsError
from .conv import conv_padding


def first_output(result: Any) -> Tensor:
    """A module's output tensor (the first element when it returns a tuple, as adaptive max pooling can)."""
    return result[0] if isinstance(result, tuple) else result


def pytorch_output_shape(module: nn.Module, x: Tensor) -> tuple[int, ...]:
    """Runs PyTorch's own forward on a copy; its refusal becomes a :class:`LayerOptionsError`."""
    try:
        with torch.no_grad():
            return tuple(first_output(copy.deepcopy(module)(x.clone())).shape)
    except (RuntimeError, ValueError, IndexError) as err:
        raise LayerOptionsError(
            f"PyTorch refuses an input of shape {tuple(x.shape)} for {module!r}: {err}"
        ) from None


CONV_OUTPUT_SIZE = (r"H_{out} = \Big\lfloor \frac{H_{in} + p_{before} + p_{after} - d\,(k - 1) - 1}{s}"
                    r"\Big\rfloor + 1")
TRANSPOSE_OUTPUT_SIZE = r"H_{out} = (H_{in} - 1)\,s - 2p + d\,(k - 1) + \mathrm{output\_padding} + 1"


@dataclass
class Duality:
    """A transposed convolution mapping a downsampled map back, and the check that it is an input-gradient.

    Attributes:
        table: One row per spatial dimension: the sizes and arguments of the shape arithmetic.
        transpose: The ``ConvTranspose`` call whose forward is compared.
        statement: What is compared with what, in words.
        max_abs_diff: ``max |ConvTranspose forward - autograd's input-gradient of the convolution|``.
        scale: ``max |autograd's input-gradient|`` (for a relative reading).
    """

    table: pd.DataFrame
    transpose: str
    statement: str
    max_abs_diff: float
    scale: float

    @property
    def max_rel_diff(self) -> float:
        """``max_abs_diff / scale`` (0 when both are 0)."""
        return self.max_abs_diff / self.scale if self.scale else self.max_abs_diff


def _conv_fns(dims: int):
    return (F.conv2d, F.conv_transpose2d) if dims == 2 else (F.conv1d, F.conv_transpose1d)


def _as_tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * n


def transpose_duality(module: nn.Module, x: Tensor, seed: int = 0) -> Duality:
    """The ``ConvTranspose`` that maps a convolution's output back to its input's shape, and the proof.

    For ``Conv1d``/``Conv2d`` on ``x``: ``dL/dY`` (drawn from ``seed``) is fed to a transposed convolution
    with the same weight, stride, dilation and groups, and ``output_padding = (H_p - d(k-1) - 1) mod s``
    per dimension (the rows the stride skipped), which restores the (padded) input's size; its output is
    compared with autograd's ``dL/dX`` (of the padded input ``X^p`` when the padding is not a symmetric
    zero padding a transposed convolution can undo itself).

    For ``ConvTranspose2d`` on ``x``: its forward (without bias) is compared with autograd's input-gradient
    of ``Conv2d`` with the same weight and arguments at ``dL/dY = x``.

    Args:
        module: A ``Conv1d``, ``Conv2d`` or ``ConvTranspose2d``.
        x: Its input.
        seed: Seeds ``dL/dY``.

    Returns:
        The shape arithmetic and the maximum difference, in float64.

    Raises:
        LayerOptionsError: For other modules, or when PyTorch refuses the input.
    """
    if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
        raise LayerOptionsError(f"the transposed-convolution duality applies to Conv1d, Conv2d and ConvTranspose2d, "
                                f"not {type(module).__name__}")
    pytorch_output_shape(module, x)
    x = x.detach().to(torch.float64)  # (N, C, *spatial)
    weight = module.weight.detach().to(torch.float64)
    dims = x.dim() - 2
    conv, conv_t = _conv_fns(dims)
    stride, dilation = _as_tuple(module.stride, dims), _as_tuple(module.dilation, dims)
    kernel, groups = tuple(weight.shape[2:]), module.groups
    names = ("H", "W") if dims == 2 else ("L",)
    if isinstance(module, nn.ConvTranspose2d):
        padding, output_padding = _as_tuple(module.padding, dims), _as_tuple(module.output_padding, dims)
        y = conv_t(x, weight, None, stride, padding, output_padding, groups, dilation)  # (N, C_out, *S_out)
        z = torch.zeros_like(y).requires_grad_(True)  # the convolution's input, shaped like y
        with torch.enable_grad():
            back = conv(z, weight, None, stride, padding, dilation, groups)  # (N, C_in, >= *S)
            grad_output = F.pad(x, [p for s, t in zip(reversed(x.shape[2:]), reversed(back.shape[2:]))
                                    for p in (0, t - s)])  # x, zero-extended to the convolution's output
            expected = torch.autograd.grad(back, z, grad_output)[0]  # (N, C_out, *S_out)
        rows = [{"dimension": n, "H_in": x.shape[2 + i], "stride s": stride[i], "padding p": padding[i],
                 "dilation d": dilation[i], "kernel k": kernel[i], "output_padding": output_padding[i],
                 "H_out": y.shape[2 + i]} for i, n in enumerate(names)]
        statement = ("ConvTranspose2d(X) (without bias) vs autograd's ∂⟨Conv2d(Z, W), X⟩/∂Z: the transposed "
                     "convolution's forward is the convolution's input-gradient")
        transpose = repr(module)
        return Duality(pd.DataFrame(rows), transpose, statement, float((y - expected).abs().max()) if y.numel()
                       else 0.0, float(expected.abs().max()) if y.numel() else 0.0)
    pads = conv_padding(kernel, dilation, module.padding)
    symmetric = module.padding_mode == "zeros" and all(before == after for before, after in pads)
    if symmetric:
        padding, x_in = tuple(before for before, _ in pads), x
        statement = "ConvTranspose(dL/dY) vs autograd's dL/dX of the convolution"
    else:
        padding = (0,) * dims
        flat = [p for before_after in reversed(pads) for p in before_after]  # F.pad order: last dimension first
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x_in = F.pad(x, flat, mode=mode)  # (N, C_in, *padded)
        statement = ("ConvTranspose(dL/dY) vs autograd's dL/dX^p of the padded input X^p (this padding is not a "
                     "symmetric zero padding, so the padding's own backward follows: crop or add the copies)")
    leaf = x_in.clone().requires_grad_(True)
    with torch.enable_grad():
        y = conv(leaf, weight, None, stride, padding, dilation, groups)  # (N, C_out, *S_out)
        grad_output = torch.randn(tuple(y.shape), generator=torch.Generator().manual_seed(seed + 1),
                                  dtype=torch.float64)  # dL/dY
        expected = torch.autograd.grad(y, leaf, grad_output)[0]  # (N, C_in, *S_in)
    sizes = x_in.shape[2:]
    output_padding = tuple((sizes[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) % stride[i]
                           for i in range(dims))
    back = conv_t(grad_output, weight, None, stride, padding, output_padding, groups, dilation)  # (N, C_in, *S_in)
    rows = [{"dimension": n, "H (conv input)": x.shape[2 + i], "p_before": pads[i][0], "p_after": pads[i][1],
             "target (H or H_p)": sizes[i], "H_out (conv)": y.shape[2 + i], "stride s": stride[i],
             "transpose padding p": padding[i], "dilation d": dilation[i], "kernel k": kernel[i],
             "output_padding": output_padding[i], "H_out (transpose)": back.shape[2 + i]}
            for i, n in enumerate(names)]
    name = "ConvTranspose2d" if dims == 2 else "ConvTranspose1d"
    transpose = (f"{name}({module.out_channels}, {module.in_channels}, kernel_size={kernel}, stride={stride}, "
                 f"padding={padding}, output_padding={output_padding}, groups={groups}, dilation={dilation}, "
                 "bias=False) with the convolution's weight")
    diff = float((back - expected).abs().max()) if back.numel() else 0.0
    return Duality(pd.DataFrame(rows), transpose, statement, diff, float(expected.abs().max()) if back.numel() else 0.0)


def conv_output_table(module: nn.Module, input_size: Sequence[int]) -> pd.DataFrame:
    """The convolution's output size per spatial dimension (:data:`CONV_OUTPUT_SIZE`), as PyTorch computes it.

    Args:
        module: A ``Conv1d`` or ``Conv2d``.
        input_size: The input's shape ``(N, C, *spatial)``.

    Returns:
        One row per spatial dimension with the arguments and ``H_out``.
    """
    dims = len(input_size) - 2
    kernel = _as_tuple(module.kernel_size, dims)
    stride, dilation = _as_tuple(module.stride, dims), _as_tuple(module.dilation, dims)
    pads = conv_padding(kernel, dilation, module.padding)
    rows = []
    for i, name in enumerate(("H", "W") if dims == 2 else ("L",)):
        size = input_size[2 + i]
        out = math.floor((size + sum(pads[i]) - dilation[i] * (kernel[i] - 1) - 1) / stride[i]) + 1
        rows.append({"dimension": name, "H_in": size, "p_before": pads[i][0], "p_after": pads[i][1],
                     "dilation d": dilation[i], "kernel k": kernel[i], "stride s": stride[i], "H_out": out})
    return pd.DataFrame(rows)
