"""Every kind of tensor a monitor can be handed, through both reduction paths: none may crash the process.

Run as a script (a crash kills only this process; the test reads what it printed): one line per case,
"ok <case>" or "error <case>: <message>" for a clean exception.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import diagnostics as dx
from diagnostics.recording import native


def direct_calls() -> None:
    """The extension itself refuses what it cannot read, with a RuntimeError."""
    ext = native.kernels()
    if ext is None:
        print("skip direct:", native.status())
        return
    out = torch.zeros((2, 4), dtype=torch.float64)
    cases = {
        "non-contiguous": torch.randn(6, 4).t(),
        "channels-last": torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last),
        "bfloat16": torch.randn(8, dtype=torch.bfloat16),
        "float16": torch.randn(8, dtype=torch.float16),
        "int": torch.arange(8),
        "sparse": torch.randn(4, 4).to_sparse(),
        "meta": torch.empty(8, device="meta"),
        "negated-view": torch.randn(8)._neg_view(),
    }
    for name, x in cases.items():
        try:
            ext.act_sums(x, out, 0)
            print(f"unexpected-accept direct {name}")
        except RuntimeError as exc:
            print(f"ok direct {name}: refused ({str(exc).splitlines()[0][:60]})")
    for name, call in {"zero-size": lambda: ext.grad_sums(torch.empty(0), out, 1),
                       "bad-row": lambda: ext.grad_sums(torch.randn(3), out, 5),
                       "bad-out": lambda: ext.grad_sums(torch.randn(3), torch.zeros(4), 0),
                       "mismatched-pair": lambda: ext.diff_sums([torch.randn(3)], [torch.randn(4)])}.items():
        try:
            call()
            print(f"ok direct {name}: accepted")
        except RuntimeError as exc:
            print(f"ok direct {name}: refused ({str(exc).splitlines()[0][:60]})")


class Subclass(torch.Tensor):
    """A plain tensor subclass (with storage), as libraries make them."""


def models() -> dict[str, tuple[nn.Module, callable]]:
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    conv(torch.randn(1, 3, 6, 6))
    sparse = nn.Sequential(nn.EmbeddingBag(20, 4, sparse=True), nn.Linear(4, 2))
    zero = nn.Sequential(nn.Linear(4, 0), nn.Linear(0, 2))
    half = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).to(torch.bfloat16)
    fp16 = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).to(torch.float16)
    meta = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).to("meta")
    sub = nn.Linear(4, 2)
    sub.weight = nn.Parameter(sub.weight.detach().as_subclass(Subclass))
    strided = nn.Linear(4, 3)
    return {
        "channels-last": (conv.to(memory_format=torch.channels_last),
                          lambda m: m(torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)).sum()),
        "sparse": (sparse, lambda m: m(torch.randint(0, 20, (3, 5))).sum()),
        "zero-size": (zero, lambda m: m(torch.randn(3, 4)).sum()),
        "bfloat16": (half, lambda m: m(torch.randn(3, 4, dtype=torch.bfloat16)).float().sum()),
        "float16": (fp16, lambda m: m(torch.randn(3, 4, dtype=torch.float16)).float().sum()),
        "meta": (meta, lambda m: m(torch.randn(3, 4, device="meta")).sum()),
        "subclass": (sub, lambda m: m(torch.randn(3, 4)).sum()),
        "non-contiguous-grad": (strided, lambda m: (m(torch.randn(3, 4)).t().contiguous() * 2).sum()),
    }


def through_monitor(fused: bool) -> None:
    for name, (model, loss_of) in models().items():
        try:
            with dx.GradientMonitor(model, fused=fused) as mon:
                for _ in range(2):
                    loss = loss_of(model)
                    loss.backward()
                    if name == "non-contiguous-grad":
                        model.weight.grad = model.weight.grad.t().contiguous().t()   # a strided gradient
                    mon.step()
                    model.zero_grad()
            frame = mon.frame()
            print(f"ok monitor fused={fused} {name}: {len(frame)} rows")
        except Exception as exc:                       # a clean error is acceptable; a crash is not
            print(f"error monitor fused={fused} {name}: {type(exc).__name__}: {str(exc)[:100]}")


def fsdp2(fused: bool) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    twin = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    twin.load_state_dict(model.state_dict())
    fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
    x = torch.randn(5, 6)
    with dx.GradientMonitor(model, fused=fused, distributed=True) as mon:
        model(x).sum().backward()
        mon.step()
    twin(x).sum().backward()
    got = mon.frame().set_index("layer")["weight_grad_norm"]
    want = {"0": float(twin[0].weight.grad.norm()), "2": float(twin[2].weight.grad.norm())}
    assert all(abs(got[k] - v) <= 1e-5 * v for k, v in want.items()), (got, want)
    print(f"ok monitor fused={fused} dtensor-fsdp2: {len(got)} rows, norms match")


if __name__ == "__main__":
    direct_calls()
    for fused in (True, False):
        through_monitor(fused)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", sys.argv[1] if len(sys.argv) > 1 else "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        for fused in (True, False):
            try:
                fsdp2(fused)
            except Exception as exc:
                print(f"error monitor fused={fused} dtensor-fsdp2: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        dist.destroy_process_group()
    print("done")
