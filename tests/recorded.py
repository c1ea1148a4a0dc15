"""Small real recorded runs shared by the dashboard tests (recorded through GradientMonitor, never faked)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import diagnostics as dx


def tiny_cnn(depth: int = 4, batchnorm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(1, 6, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(6, 6, 3, padding=1)] + ([nn.BatchNorm2d(6)] if batchnorm else []) + [nn.Tanh()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)]
    return nn.Sequential(*layers)


def record_cnn(store: dx.RunStore, name: str, steps: int = 12, batchnorm: bool = False, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = tiny_cnn(batchnorm=batchnorm)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with dx.GradientMonitor(model, store=store, run_name=name, optimizer=opt, histogram_every=2,
                            kernels="auto", kernel_every=4) as mon:
        for _ in range(steps):
            x, y = torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,))
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            mon.step(loss=loss, accuracy=0.5)
            opt.step()
            opt.zero_grad()
    return mon.run_id


def record_mlp_one_step(store: dx.RunStore, name: str = "one step mlp") -> str:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with dx.GradientMonitor(model, store=store, run_name=name) as mon:
        model(torch.randn(3, 4)).pow(2).mean().backward()
        mon.step()
    return mon.run_id


def make_store(root: Path) -> tuple[dx.RunStore, dict[str, str]]:
    store = dx.RunStore(root)
    runs = {"plain": record_cnn(store, "plain cnn"), "bn": record_cnn(store, "bn cnn", batchnorm=True),
            "mlp": record_mlp_one_step(store)}
    return store, runs
