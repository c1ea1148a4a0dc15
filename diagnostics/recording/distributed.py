"""Combine one step's activation and output-gradient sums across the processes of a DDP job."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..errors import MonitorError
from .buffers import Call


def world_size(group: Any) -> int:
    """Processes in ``group`` (1 when torch.distributed is not initialised)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def all_reduce_step(acts: dict[str, list[Call]], grads: dict[str, list[Call]], calls: Mapping[str, int],
                    loss: float, group: Any = None) -> float:
    """Combine one step's per-call sums across the processes of ``group``, in place, outside any hook.

    Σx, Σx², non-zero, element and NaN/Inf counts are added; maxima take the maximum. Each rank's loss
    averages only its local batch, so a local output gradient is ``W`` times the gradient of the global mean
    loss: Σ|g| is divided by W, Σg² by W², max|g| by W. The result equals one process on the global batch.
    Two collectives per step (plus one small consistency check).

    Returns:
        The loss averaged over the ranks (the global batch's mean loss for equal local batches).
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    for table in (acts, grads):                                   # host rows of the fused kernels -> tensors
        for items in table.values():
            for i, c in enumerate(items):
                if c.nonfinite is None:
                    items[i] = replace(c, sums=torch.from_numpy(np.array(c.sums[:3])), nonfinite=int(c.sums[3]))
    act_items = [(name, i, call) for name in sorted(acts) for i, call in enumerate(acts[name])]
    grad_items = [(name, i, call) for name in sorted(grads) for i, call in enumerate(grads[name])]
    every = [c for _, _, c in act_items + grad_items]
    device = every[0].sums.device if every else torch.device("cpu")
    layout = ("|".join(f"a:{n}:{i}" for n, i, _ in act_items) + "#" +
              "|".join(f"g:{n}:{i}" for n, i, _ in grad_items) + "#" +
              "|".join(f"c:{n}:{calls[n]}" for n in sorted(calls)))
    signature = float(zlib.crc32(layout.encode()))
    check = torch.tensor([signature, -signature, len(every), -len(every)], dtype=torch.float64, device=device)
    dist.all_reduce(check, op=dist.ReduceOp.MAX, group=group)
    if check[0] != -check[1] or check[2] != -check[3]:
        raise MonitorError("the ranks recorded different layers or call counts in one step; every rank must run "
                           "the same model code on a batch of the same shape")
    if not every:
        total = torch.tensor([loss], dtype=torch.float64, device=device)
        dist.all_reduce(total, group=group)
        return float(total) / world

    def nonfinite(call: Call) -> torch.Tensor:
        value = call.nonfinite
        if isinstance(value, torch.Tensor):
            return value.to(device=device, dtype=torch.float64).reshape(1)
        return torch.tensor([float(value)], dtype=torch.float64, device=device)

    numel = [torch.tensor([float(c.numel)], dtype=torch.float64, device=device) for c in every]
    n_acts = len(act_items)
    added = torch.cat([                                                 # every additive number, in order
        torch.tensor([loss], dtype=torch.float64, device=device),
        *(torch.cat([c.sums.to(torch.float64), n, nonfinite(c)]) for c, n in zip(every[:n_acts], numel)),
        *(torch.cat([c.sums[:2].to(torch.float64), n, nonfinite(c)]) for c, n in
          zip(every[n_acts:], numel[n_acts:])),
    ])                                                                  # (1 + 5 * acts + 4 * grads,)
    maxima = torch.stack([c.sums[2].to(torch.float64) for c in every[n_acts:]]) if grad_items else None
    dist.all_reduce(added, group=group)
    if maxima is not None:
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=group)
    pos = 1
    for name, i, call in act_items:
        s = added[pos:pos + 5]
        acts[name][i] = replace(call, numel=int(s[3].item()), sums=s[:3].clone(), nonfinite=int(s[4].item()))
        pos += 5
    for k, (name, i, call) in enumerate(grad_items):
        s = added[pos:pos + 4]
        sums = torch.stack([s[0] / world, s[1] / world**2, maxima[k] / world])  # (3,) of the global mean loss
        grads[name][i] = replace(call, numel=int(s[2].item()), sums=sums, nonfinite=int(s[3].item()))
        pos += 4
    return float(added[0]) / world
