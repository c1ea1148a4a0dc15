"""FSDP2 and DDP on 2 CPU processes (gloo) against an un-sharded twin on the global batch; run with torchrun.

Every rank trains its half of each global batch; the twin (on every rank, one process's view) trains on the whole
batch. Each recorded number of the monitored run must equal the twin's, and each recorded step may run at most
two collectives. Rank 0 prints "OK <mode>" when everything matched.
"""

from __future__ import annotations

import math
import sys
import warnings

import torch
import torch.distributed as dist
from torch import nn

import diagnostics as dx
from diagnostics.recording import distributed as combine

COLUMNS = ["weight_grad_norm", "weight_grad_mean_abs", "weight_grad_max_abs", "bias_grad_norm", "weight_norm",
           "update_ratio", "act_grad_norm", "act_grad_mean_abs", "act_grad_max_abs", "act_mean", "act_std",
           "act_zero_frac", "calls", "units", "dead_units"]


def make() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 15), nn.Tanh(), nn.Linear(15, 3))
    with torch.no_grad():                   # ReLU unit 0 follows x[:, 0] (> 0 on rank 1 only); unit 1 never fires
        model[0].weight[:2] = 0.0
        model[0].weight[0, 0] = 1.0
        model[0].bias[:2] = torch.tensor([0.0, -1.0])
    return model


class Counting:
    """Counts every collective call made while it is active (wrapping torch.distributed's functions)."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter_tensor",
             "all_gather_object", "barrier")

    def __init__(self) -> None:
        self.calls = 0
        self.active = False
        for name in self.NAMES:
            original = getattr(dist, name)

            def wrapped(*args, _original=original, **kwargs):
                if self.active:
                    self.calls += 1
                return _original(*args, **kwargs)
            setattr(dist, name, wrapped)


def crash_without_collectives() -> None:
    """An exception inside the block: the monitor leaves without any collective (one could hang)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    rank, world = dist.get_rank(), dist.get_world_size()
    model = make()
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    counting = Counting()
    try:
        with dx.GradientMonitor(model, optimizer=opt, distributed=True) as mon:
            model(torch.randn(4, 6)).sum().backward()
            mon.step()
            opt.step()                                   # this step's shard updates are still to be combined
            counting.active = True
            raise ValueError("user code")
    except ValueError:
        pass
    counting.active = False
    assert counting.calls == 0, counting.calls
    if rank == 0:
        frame = mon.frame()
        assert frame["update_ratio"].isna().all() and frame["weight_grad_norm"].notna().any()
    dist.barrier()
    if rank == 0:
        print("OK crash no collectives on the exception path")


def main(mode: str) -> None:
    dist.init_process_group("gloo")
    if mode == "crash":
        crash_without_collectives()
        print(f"DONE rank {dist.get_rank()}", flush=True)
        dist.destroy_process_group()
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    model, twin = make(), make()
    if mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        trained = model
    else:
        trained = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    counting = Counting()
    per_step = []
    torch.manual_seed(1)
    batches = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(3)]
    for x, _ in batches:
        x[:, 0] = x[:, 0].abs() * torch.tensor([-1.0] * 4 + [1.0] * 4)     # rank 0's half: unit 0 inactive
    # unit_window=1: a unit is dead when no sample of the global batch activates it, an OR across the ranks
    with dx.GradientMonitor(trained, optimizer=opt, distributed=True, unit_activity=True, unit_window=1) as mon, \
            dx.GradientMonitor(twin, optimizer=twin_opt, unit_activity=True, unit_window=1) as reference:
        for x, y in batches:
            part = slice(rank * 4, rank * 4 + 4)
            loss = nn.functional.cross_entropy(trained(x[part]), y[part])
            loss.backward()
            counting.active, before = True, counting.calls
            mon.step(loss=loss)
            counting.active = False
            per_step.append(counting.calls - before)
            opt.step()
            opt.zero_grad()
            twin_loss = nn.functional.cross_entropy(twin(x), y)
            twin_loss.backward()
            reference.step(loss=twin_loss)
            twin_opt.step()
            twin_opt.zero_grad()
    if rank != 0:                                   # only rank 0 keeps the run (no store here: in memory)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert mon.frame().empty and any("keeps no rows" in str(w.message) for w in caught)
    else:
        got, want = mon.frame(), reference.frame()
        assert list(got["layer"]) == list(want["layer"]), (list(got["layer"]), list(want["layer"]))
        for column in [*COLUMNS, "grad_norm_total", "loss"]:
            for a, b in zip(got[column], want[column]):
                assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9), \
                    (mode, column, list(got[column]), list(want[column]))
        assert got["update_ratio"].notna().sum() == 3 * 3, got["update_ratio"]  # every step, also the last
        relu = got[got["layer"] == "1"]
        # unit 1 is dead, unit 0 is not (rank 0 alone would call it dead): the ranks' activity was OR-ed
        assert list(relu["units"]) == [16] * 3 and relu["dead_units"].min() == 1 / 16, relu["dead_units"]
    assert max(per_step) <= 2, per_step
    assert combine.COUNTER["collectives"] == sum(per_step) + (2 if mode == "fsdp2" else 0), per_step
    dist.barrier()
    if rank == 0:
        print(f"OK {mode} collectives per step {per_step}")
    print(f"DONE rank {rank}", flush=True)          # every check of this rank passed; only teardown is left
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
