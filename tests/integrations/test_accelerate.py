"""A plain accelerate loop (no Trainer): GradientMonitor on the objects Accelerator.prepare returns records the
gradient accumulated over accelerator.accumulate(...) once per optimizer step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import diagnostics as dx
from tests.conftest import hook_state

accelerate = pytest.importorskip("accelerate")


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))


def test_accumulated_gradient_of_an_accelerate_loop(store) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)    # (N, 1, 8, 8), (N,)
    model = tiny_cnn()
    start = copy.deepcopy(model).double()                          # the oracle for the first step's gradient
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, optimizer, loader = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                                   DataLoader(TensorDataset(x, y), batch_size=4))
    clean = hook_state(model)                                      # as prepare() left it
    grads, before, after, losses = [], [], [], []
    with dx.GradientMonitor(model, store=store, optimizer=optimizer) as mon:
        for xb, yb in loader:
            with accelerator.accumulate(model):
                loss = nn.functional.cross_entropy(model(xb), yb)
                accelerator.backward(loss)                         # divides by gradient_accumulation_steps
                losses.append(float(loss.detach()))
                if accelerator.sync_gradients:
                    mon.step(loss=loss)
                    grads.append({n: p.grad.double().clone() for n, p in model.named_parameters()})
                    before.append({n: p.detach().double().clone() for n, p in model.named_parameters()})
                optimizer.step()                                   # a no-op until the gradients are synced
                if accelerator.sync_gradients:
                    after.append({n: p.detach().double().clone() for n, p in model.named_parameters()})
                optimizer.zero_grad()
    assert hook_state(model) == clean

    steps = store.step_frame(mon.run_id)
    assert steps["step"].tolist() == [0, 1]                        # 4 micro-batches, 2 per optimizer step
    assert steps["loss"].tolist() == pytest.approx([losses[1], losses[3]], rel=1e-6)   # the loss passed to step()
    mean_loss = sum(nn.functional.cross_entropy(start(x[i:i + 4].double()), y[i:i + 4]) for i in (0, 4)) / 2
    expected = torch.autograd.grad(mean_loss, list(start.parameters()))
    assert steps["grad_norm_total"][0] == pytest.approx(norm(list(expected)), rel=1e-5)
    layers = store.frame(mon.run_id, join_steps=False).dropna(subset=["weight_grad_norm"])
    assert sorted(layers["layer"].unique()) == ["0", "3"]
    for row in layers.itertuples():
        w, b = f"{row.layer}.weight", f"{row.layer}.bias"
        assert row.weight_grad_norm == pytest.approx(norm([grads[row.step][w]]), rel=1e-5)
        assert row.bias_grad_norm == pytest.approx(norm([grads[row.step][b]]), rel=1e-5)
        ratio = norm([after[row.step][w] - before[row.step][w]]) / norm([before[row.step][w]])
        assert row.update_ratio == pytest.approx(ratio, rel=1e-4)
        assert row.calls == 2
