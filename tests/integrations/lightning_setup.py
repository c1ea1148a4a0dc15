"""A tiny Lightning CNN, its data, and an independent capture of what each optimizer step saw (float64 copies).

Used by the pytest tests and by the standalone DDP script; ``package`` is ``"lightning.pytorch"`` or
``"pytorch_lightning"``, so the same code runs under either Trainer.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def load(package: str) -> Any:
    return importlib.import_module(package)


def data(n: int = 32, batch_size: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)                                     # (N, 1, 8, 8)
    y = torch.randint(0, 3, (n,), generator=g)                                   # (N,)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def make_module(package: str, *, fail_at_step: int | None = None, manual: bool = False) -> Any:
    """A small CNN LightningModule that keeps every training_step loss and logs ``acc`` on each step."""
    pl = load(package)

    class TinyCNN(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(4 * 4 * 4, 3)
            self.losses: list[tuple[int, float]] = []      # (global step, training_step loss)
            self.logit_sums: list[tuple[int, float, int]] = []   # (global step, sum of the head's outputs, count)
            self.automatic_optimization = not manual

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).flatten(1))                     # (B, 3)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if fail_at_step is not None and self.trainer.global_step == fail_at_step:
                raise ValueError(f"user error at step {fail_at_step}")
            x, y = batch
            logits = self(x)
            loss = nn.functional.cross_entropy(logits, y)
            self.losses.append((self.trainer.global_step, float(loss.detach().float())))
            self.logit_sums.append((self.trainer.global_step, float(logits.detach().double().sum()), logits.numel()))
            self.log("acc", (logits.argmax(1) == y).float().mean(), on_step=True, on_epoch=False)
            if manual:
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self(x), y), on_epoch=True)

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self(batch[0])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    return TinyCNN()


def make_capture(package: str) -> Any:
    """A callback that copies, in float64, what the recorded step must show: p.grad at on_before_optimizer_step
    (before clipping), the total norm after clipping, and W before and after each optimizer step."""
    pl = load(package)

    class Capture(pl.Callback):
        def __init__(self) -> None:
            self.grads: dict[int, dict[str, torch.Tensor]] = {}
            self.before: dict[int, dict[str, torch.Tensor]] = {}
            self.after: dict[int, dict[str, torch.Tensor]] = {}
            self.clipped_norm: dict[int, float] = {}
            self.lr: dict[int, float] = {}
            self.epoch: dict[int, int] = {}
            self._step: int | None = None

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            step = trainer.global_step
            self._step = step
            self.grads[step] = {n: p.grad.detach().double().clone() for n, p in pl_module.named_parameters()
                                if p.grad is not None}
            self.before[step] = {n: p.detach().double().clone() for n, p in pl_module.named_parameters()}
            self.lr[step] = optimizer.param_groups[0]["lr"]
            self.epoch[step] = trainer.current_epoch

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
            step = self._step
            if step is None:
                return
            self._step = None
            self.after[step] = {n: p.detach().double().clone() for n, p in pl_module.named_parameters()}
            grads = [p.grad.detach().double() for p in pl_module.parameters() if p.grad is not None]
            self.clipped_norm[step] = float(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g) for g in grads])))

    return Capture()
