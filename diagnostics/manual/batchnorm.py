"""Manual backward of BatchNorm1d and BatchNorm2d, with batch or running statistics, fast and with loops.

Per channel, over the ``m`` elements of the batch and spatial positions:

* Batch statistics (training, or no running statistics): ``mu = mean(x)``, ``var = mean((x - mu)^2)``
  (biased), ``x_hat = (x - mu) / sqrt(var + eps)``, ``y = gamma * x_hat + beta``;
  ``dL/dx = gamma / sqrt(var + eps) * (dL/dy - mean(dL/dy) - x_hat * mean(dL/dy * x_hat))``.
* Running statistics (evaluation): ``x_hat = (x - running_mean) / sqrt(running_var + eps)``;
  ``dL/dx = gamma / sqrt(running_var + eps) * dL/dy``.
* Both: ``dL/dgamma = sum dL/dy * x_hat``, ``dL/dbeta = sum dL/dy``.

Without ``affine``, ``gamma = 1`` and there are no parameter gradients. A rule never changes the running
statistics; only :func:`batch_norm_forward_updating` (used while training through the manual backward)
updates them, exactly as ``nn.BatchNorm2d.forward`` does.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rule import DXF, DY, DYF, Formula, Grads, Rule, State, require_small


def uses_batch_stats(module: nn.modules.batchnorm._BatchNorm, state: State) -> bool:
    """Whether the module normalises with the batch's statistics (as ``_BatchNorm.forward`` decides).

    Args:
        module: The batch-norm module (its ``training`` flag).
        state: Its tensors; running statistics may be ``None``.

    Returns:
        True in training mode or when there are no running statistics.
    """
    return module.training or (state["running_mean"] is None and state["running_var"] is None)


def batch_norm_grad_input(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    grad_output: Tensor,
    training: bool,
    eps: float,
) -> Tensor:
    """dL/dx of ``batch_norm``.

    Args:
        input: ``(N, C, *)``.
        running_mean: ``(C,)``; read only when ``training`` is false.
        running_var: ``(C,)``; read only when ``training`` is false.
        weight: ``(C,)`` gamma, or ``None`` for one.
        grad_output: ``(N, C, *)``.
        training: Normalise with the batch's statistics (``F.batch_norm``'s ``training``).
        eps: As for ``F.batch_norm``.

    Returns:
        ``(N, C, *)``.
    """
    dims, shape = _channel_dims(input)
    gamma = 1.0 if weight is None else weight.view(shape)  # (1, C, 1, ...)
    if not training:
        return grad_output * gamma * (running_var.view(shape) + eps).rsqrt()  # (N, C, *)
    x_hat, inv_std = _normalise_with_batch_stats(input, dims, eps)  # (N, C, *), (1, C, 1, ...)
    g_mean = grad_output.mean(dim=dims, keepdim=True)  # (1, C, 1, ...)
    gx_mean = (grad_output * x_hat).mean(dim=dims, keepdim=True)  # (1, C, 1, ...)
    return gamma * inv_std * (grad_output - g_mean - x_hat * gx_mean)  # (N, C, *)


def batch_norm_grad_weight(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    grad_output: Tensor,
    training: bool,
    eps: float,
) -> Tensor:
    """dL/dgamma of ``batch_norm``: ``sum dL/dy * x_hat`` per channel.

    Args:
        input: ``(N, C, *)``.
        running_mean: ``(C,)``; read only when ``training`` is false.
        running_var: ``(C,)``; read only when ``training`` is false.
        grad_output: ``(N, C, *)``.
        training: Normalise with the batch's statistics.
        eps: As for ``F.batch_norm``.

    Returns:
        ``(C,)``.
    """
    dims, shape = _channel_dims(input)
    if training:
        x_hat, _ = _normalise_with_batch_stats(input, dims, eps)  # (N, C, *)
    else:
        x_hat = (input - running_mean.view(shape)) * (running_var.view(shape) + eps).rsqrt()  # (N, C, *)
    return (grad_output * x_hat).sum(dim=dims)  # (C,)


def batch_norm_grad_bias(grad_output: Tensor) -> Tensor:
    """dL/dbeta of ``batch_norm``: ``sum dL/dy`` per channel.

    Args:
        grad_output: ``(N, C, *)``.

    Returns:
        ``(C,)``.
    """
    dims, _ = _channel_dims(grad_output)
    return grad_output.sum(dim=dims)  # (C,)


def _channel_dims(input: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The dimensions to reduce over and the broadcast shape of a per-channel vector."""
    dims = (0, *range(2, input.dim()))
    shape = (1, input.shape[1]) + (1,) * (input.dim() - 2)
    return dims, shape


def _normalise_with_batch_stats(input: Tensor, dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor]:
    mean = input.mean(dim=dims, keepdim=True)  # (1, C, 1, ...)
    centered = input - mean  # (N, C, *)
    var = (centered * centered).mean(dim=dims, keepdim=True)  # (1, C, 1, ...) biased
    inv_std = (var + eps).rsqrt()  # (1, C, 1, ...)
    return centered * inv_std, inv_std  # (N, C, *), (1, C, 1, ...)


def batch_norm_grads_reference(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    grad_output: Tensor,
    training: bool,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """dL/dx, dL/dgamma and dL/dbeta of ``batch_norm``, one channel and one element at a time.

    Args:
        input: ``(N, C, *)``.
        running_mean: ``(C,)``; read only when ``training`` is false.
        running_var: ``(C,)``; read only when ``training`` is false.
        weight: ``(C,)`` gamma, or ``None`` for one.
        grad_output: ``(N, C, *)``.
        training: Normalise with the batch's statistics.
        eps: As for ``F.batch_norm``.

    Returns:
        ``(N, C, *)``, ``(C,)`` and ``(C,)``.
    """
    C = input.shape[1]
    require_small(4 * input.numel(), "batch_norm_grads")
    grad_input = torch.zeros_like(input)  # (N, C, *)
    grad_weight = input.new_zeros(C)  # (C,)
    grad_bias = input.new_zeros(C)  # (C,)
    for c in range(C):
        xs = input[:, c].flatten().tolist()
        gs = grad_output[:, c].flatten().tolist()
        m = len(xs)
        gamma = 1.0 if weight is None else float(weight[c])
        if training:
            mean = sum(xs) / m if m else math.nan
            var = sum((x - mean) ** 2 for x in xs) / m if m else math.nan
        else:
            mean, var = float(running_mean[c]), float(running_var[c])
        inv_std = 1.0 / math.sqrt(var + eps) if m else math.nan
        x_hats = [(x - mean) * inv_std for x in xs]
        sum_g = sum(gs)
        sum_g_xhat = sum(g * x_hat for g, x_hat in zip(gs, x_hats))
        if training:
            dxs = [gamma * inv_std * (g - sum_g / m - x_hat * sum_g_xhat / m) for g, x_hat in zip(gs, x_hats)]
        else:
            dxs = [gamma * inv_std * g for g in gs]
        grad_input[:, c] = torch.tensor(dxs, dtype=input.dtype).view(input[:, c].shape)
        grad_weight[c] = sum_g_xhat
        grad_bias[c] = sum_g
    return grad_input, grad_weight, grad_bias


def _batch_norm_forward(module: nn.modules.batchnorm._BatchNorm, x: Tensor, state: State) -> Tensor:
    """``module.forward`` without the running-statistics update."""
    batch_stats = uses_batch_stats(module, state)
    return F.batch_norm(
        x,
        None if batch_stats else state["running_mean"],
        None if batch_stats else state["running_var"],
        state["weight"],
        state["bias"],
        batch_stats,
        0.0,
        module.eps,
    )


def batch_norm_forward_updating(module: nn.modules.batchnorm._BatchNorm, x: Tensor, state: State) -> Tensor:
    """``module.forward`` including its side effects on the running statistics, step for step.

    Args:
        module: The batch-norm module; its buffers are updated in place in training mode.
        x: ``(N, C, *)``.
        state: Its parameters (``weight``, ``bias``) as the caller passes them.

    Returns:
        ``(N, C, *)``.
    """
    factor = 0.0 if module.momentum is None else module.momentum
    if module.training and module.track_running_stats and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        factor = 1.0 / float(module.num_batches_tracked) if module.momentum is None else module.momentum
    batch_stats = module.training or (module.running_mean is None and module.running_var is None)
    keep_stats = not module.training or module.track_running_stats
    return F.batch_norm(
        x,
        module.running_mean if keep_stats else None,
        module.running_var if keep_stats else None,
        state["weight"],
        state["bias"],
        batch_stats,
        factor,
        module.eps,
    )


def _batch_norm_grads(
    module: nn.modules.batchnorm._BatchNorm, x: Tensor, state: State, grad_output: Tensor, reference: bool
) -> Grads:
    batch_stats = uses_batch_stats(module, state)
    stats = (state["running_mean"], state["running_var"])
    if reference:
        grad_input, grad_weight, grad_bias = batch_norm_grads_reference(
            x, *stats, state["weight"], grad_output, batch_stats, module.eps
        )
    else:
        grad_input = batch_norm_grad_input(x, *stats, state["weight"], grad_output, batch_stats, module.eps)
        grad_weight = batch_norm_grad_weight(x, *stats, grad_output, batch_stats, module.eps)
        grad_bias = batch_norm_grad_bias(grad_output)
    affine = state["weight"] is not None
    return {
        "input": grad_input,
        "weight": grad_weight if affine else None,
        "bias": grad_bias if state["bias"] is not None else None,
    }



# --- formulas (LaTeX), shown by the Gradient checks page -----------------------------------------------------

def batch_norm_formulas(module: nn.Module | None = None) -> list[Formula]:
    """Batch norm in LaTeX: batch statistics in training (or without running statistics), running ones in eval."""
    batch_stats = module is None or module.training or module.running_mean is None
    common = [
        Formula("bias", "Bias (beta) gradient", rf"\frac{{\partial L}}{{\partial \beta_c}} = \sum_{{m}} {DY}_{{m,c}}}}"),
        Formula("weight", "Weight (gamma) gradient",
                rf"\frac{{\partial L}}{{\partial \gamma_c}} = \sum_{{m}} {DY}_{{m,c}}}}\, \hat X_{{m,c}}"),
    ]
    if batch_stats:
        return [Formula("forward", "Forward, batch statistics (training): per channel c over its m = N·(spatial) "
                                   "elements",
                        r"\hat X = \frac{X - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}},\quad \mu_c = \tfrac{1}{m}\sum X,\quad"
                        r"\sigma_c^2 = \tfrac{1}{m}\sum (X - \mu_c)^2,\quad Y = \gamma_c \hat X + \beta_c"),
                *common,
                Formula("input", "Input gradient (the batch statistics depend on X too)",
                        rf"{DXF} = \frac{{\gamma_c}}{{\sqrt{{\sigma_c^2 + \epsilon}}}}\Big({DYF} - \overline{{{DYF}}}"
                        rf" - \hat X\, \overline{{{DYF}\hat X}}\Big)\quad(\overline{{\;\cdot\;}}:\text{{ mean over }} m)")]
    return [Formula("forward", "Forward, running statistics (eval)",
                    r"\hat X = \frac{X - \hat\mu_c}{\sqrt{\hat\sigma_c^2 + \epsilon}},\quad Y = \gamma_c \hat X + \beta_c"),
            *common,
            Formula("input", "Input gradient (the running statistics are constants)",
                    rf"{DXF} = \frac{{\gamma_c}}{{\sqrt{{\hat\sigma_c^2 + \epsilon}}}}\, {DYF}")]


BATCH_NORM1D = Rule(
    name="BatchNorm1d",
    forward=_batch_norm_forward,
    fast=partial(_batch_norm_grads, reference=False),
    reference=partial(_batch_norm_grads, reference=True),
    params=("weight", "bias"),
    buffers=("running_mean", "running_var"),
    input_ndims=(2, 3),
    stateful_forward=batch_norm_forward_updating,
    formulas=batch_norm_formulas,
)

BATCH_NORM2D = Rule(
    name="BatchNorm2d",
    forward=_batch_norm_forward,
    fast=partial(_batch_norm_grads, reference=False),
    reference=partial(_batch_norm_grads, reference=True),
    params=("weight", "bias"),
    buffers=("running_mean", "running_var"),
    input_ndims=(4,),
    stateful_forward=batch_norm_forward_updating,
    formulas=batch_norm_formulas,
)
