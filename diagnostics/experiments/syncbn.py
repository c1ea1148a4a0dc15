"""Batch norm with statistics summed over processes, on CPU too (PyTorch's SyncBatchNorm needs CUDA)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes: forward all-reduces the input, backward all-reduces the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNormCPU(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose batch statistics are summed over all processes; works on CPU with gloo.

    ``torch.nn.SyncBatchNorm`` supports only accelerators. Here the per-channel Σx, Σx² and counts are
    all-reduced by a differentiable sum (whose backward all-reduces the gradient, as
    ``nn.SyncBatchNorm`` does), so forward and backward equal one process on the global batch. The
    parameters and buffers are those of ``nn.BatchNorm1d/2d``, so state dicts are interchangeable.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {input.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xd = x.double()                                              # (N, C, ...) sums in float64
        count = xd.new_full((1,), x.numel() // c)                     # (1,) local values per channel
        local = torch.cat([xd.sum(dims), (xd * xd).sum(dims), count])  # (2C + 1,) this rank's sums
        stats = _AllReduceSum.apply(local)                            # (2C + 1,) sums over all ranks
        n = stats[2 * c]
        mean = stats[:c] / n                                         # (C,)
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)      # (C,) biased, as batch norm uses
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (xd - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)  # (N, C, ...)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm synced across processes: ``nn.SyncBatchNorm`` on accelerators, :class:`SyncBatchNormCPU` on CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            synced = SyncBatchNormCPU(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced)
        else:
            convert_sync_batchnorm(child, device)
    return model

