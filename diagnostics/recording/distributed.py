"""Combine one step's numbers across the processes of a DDP or FSDP2 job: two small collectives per step.

Every rank reduces what it holds (its local batch's activations and output gradients; under FSDP2 its shard of
each parameter and gradient) to the same handful of sums as one process would, and queues them in an
:class:`Exchange` with the way they combine: sums add (Σx, Σx², Σ|g|, Σg², Σw², element and NaN/Inf counts,
‖ΔW‖² of shards), maxima take the maximum. One ``all_gather_into_tensor`` of ``[length, layout hash]`` proves
that every rank queued the same numbers in the same order (the same layers, calls and shards), and a second one
moves all the numbers: nothing is exchanged per layer or per parameter, and no ``full_tensor()`` is ever built.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import torch

from ..errors import MonitorError

SUM, MAX = 0, 1

#: Collectives run by this module, for tests that count them.
COUNTER = {"collectives": 0}


def world_size(group: Any) -> int:
    """Processes in ``group`` (1 when torch.distributed is not initialised)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a DTensor whose local values are only a part of it (FSDP2's ``Shard`` placements)."""
    placements = getattr(t, "placements", None)
    if placements is None or type(t).__name__ != "DTensor":
        return False
    return any(p.is_shard() or p.is_partial() for p in placements)


def check_sharding(params: list[torch.Tensor], distributed: bool, group: Any) -> None:
    """Refuse what the combination cannot make exact: shards without ``distributed=True``, 2-D meshes."""
    sharded = [p for p in params if is_sharded(p)]
    if not sharded:
        return
    if not distributed:
        raise MonitorError("the model's parameters are sharded DTensors (FSDP2): pass distributed=True so that "
                           "every statistic is of the full parameters, combined across the ranks")
    for p in sharded:
        mesh = p.device_mesh
        if mesh.ndim != 1 or mesh.size() != world_size(group):
            raise MonitorError(f"a parameter is sharded over a {mesh.ndim}-D device mesh of {mesh.size()} ranks; "
                               "only FSDP2 over one 1-D mesh of all ranks is supported (not HSDP or tensor "
                               "parallel)")


def _device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Exchange:
    """Numbers to combine across ranks, each with its rule (SUM or MAX) and a label of what it is."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.ops: list[int] = []
        self._labels: list[str] = []

    def add(self, label: str, op: int, *values: float) -> int:
        """Queue ``values`` (one label for all of them); returns the index of the first."""
        start = len(self.values)
        self.values.extend(float(v) for v in values)
        self.ops.extend([op] * len(values))
        self._labels.append(f"{label}:{op}:{len(values)}")
        return start

    def run(self, group: Any) -> np.ndarray:
        """Combine across the ranks of ``group`` (two collectives); every rank gets the same result."""
        import torch.distributed as dist

        world = dist.get_world_size(group)
        device = _device(group)
        signature = float(zlib.crc32("|".join(self._labels).encode()))
        head = torch.tensor([float(len(self.values)), signature], dtype=torch.float64, device=device)
        heads = torch.empty(2 * world, dtype=torch.float64, device=device)
        dist.all_gather_into_tensor(heads, head, group=group)
        COUNTER["collectives"] += 1
        heads = heads.view(world, 2).cpu()
        if not bool((heads == heads[0]).all()):
            raise MonitorError("the ranks recorded different layers, calls or parameter shards in one step; every "
                               "rank must run the same model code on a batch of the same shape")
        if not self.values:
            return np.empty(0)
        mine = torch.tensor(self.values, dtype=torch.float64, device=device)
        every = torch.empty(world * len(self.values), dtype=torch.float64, device=device)
        dist.all_gather_into_tensor(every, mine, group=group)
        COUNTER["collectives"] += 1
        table = every.view(world, -1).cpu().numpy()                         # (world, n)
        ops = np.asarray(self.ops)
        return np.where(ops == SUM, table.sum(axis=0), table.max(axis=0))   # NaN propagates either way


def sum_across_ranks(values: list[float], labels: list[str], group: Any) -> list[float]:
    """Each value summed over the ranks of ``group`` (two collectives)."""
    ex = Exchange()
    at = [ex.add(f"u:{label}", SUM, value) for label, value in zip(labels, values)]
    result = ex.run(group)
    return [float(result[i]) for i in at]


def mean_loss(total: float, world: int) -> float:
    """The global batch's mean loss from the ranks' summed local means (equal local batches)."""
    return total / world if not math.isnan(total) else math.nan
