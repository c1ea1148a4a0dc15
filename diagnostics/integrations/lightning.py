"""PyTorch Lightning: ``GradientFlowCallback`` records every optimizer step of ``Trainer.fit`` with a GradientMonitor.

One line::

    trainer = L.Trainer(callbacks=[GradientFlowCallback(store="runs", run_name="resnet", every=1)], ...)

Where in Lightning's step it reads what (automatic optimisation)::

    training_step -> on_before_backward(loss / accumulate_grad_batches) -> backward      (x accumulate_grad_batches)
    [AMP: scaler.unscale_] -> on_before_optimizer_step  <- the step is recorded here: accumulated, unscaled,
                                                            before clipping
    clip_gradients(gradient_clip_val) -> optimizer.step() <- update_ratio from the optimizer's step hooks
    on_train_batch_end                                  <- values logged with self.log(..., on_step=True)

The callback works with a Trainer of either package (``lightning.pytorch`` or ``pytorch_lightning``): it derives
from the ``Callback`` class of each one that is installed. Manual optimisation (and so several optimizers),
DeepSpeed and FSDP are refused with a :class:`~diagnostics.MonitorError`.
"""

from __future__ import annotations

import importlib
import math
import os
import warnings
from typing import Any

import torch

from ..errors import MonitorError
from ..recording import GradientMonitor
from ..recording.options import RESERVED_METRICS
from ..store import RunStore
from .session import Session, check_options, describe, learning_rates, missing, store_for_rank

#: The packages a Lightning Trainer may come from, as named in the run's metadata ``framework``.
PACKAGES: tuple[str, ...] = ("lightning.pytorch", "pytorch_lightning")


def _callback_bases() -> tuple[type, ...]:
    bases = []
    for package in PACKAGES:
        try:
            bases.append(importlib.import_module(package).Callback)
        except ModuleNotFoundError as exc:
            if exc.name is None or package.split(".")[0] != exc.name.split(".")[0]:
                raise                                      # the package is there but one of its imports is not
    if not bases:
        raise missing("PyTorch Lightning", "lightning   (or: pip install pytorch-lightning)")
    return tuple(bases)


#: Strategies refused by class name (any class in the strategy's MRO), with the reason.
REFUSED_STRATEGIES: dict[str, str] = {
    "DeepSpeedStrategy": "DeepSpeed partitions gradients and steps the optimizer itself, so p.grad is not the "
                         "gradient the optimizer uses",
    "FSDPStrategy": "FSDP shards parameters and gradients across ranks; every rank holds only a shard",
    "ModelParallelStrategy": "tensor/FSDP2 parallelism shards parameters and gradients across ranks",
}
#: Strategies the callback records under (one process, or DDP in any of its launchers).
SUPPORTED_STRATEGIES: tuple[str, ...] = ("SingleDeviceStrategy", "DDPStrategy")


def _strategy_names(strategy: Any) -> list[str]:
    return [cls.__name__ for cls in type(strategy).__mro__]


def _check_strategy(strategy: Any) -> None:
    names = _strategy_names(strategy)
    for name, reason in REFUSED_STRATEGIES.items():
        if name in names:
            raise MonitorError(f"GradientFlowCallback does not support {type(strategy).__name__}: {reason}. Record "
                               "with strategy='ddp' (or one device) instead")
    if not any(name in names for name in SUPPORTED_STRATEGIES):
        raise MonitorError(f"GradientFlowCallback supports one device and DDP strategies, not "
                           f"{type(strategy).__name__}")


class GradientFlowCallback(*_callback_bases()):  # type: ignore[misc]
    """Record per-layer gradient statistics of every optimizer step of ``Trainer.fit``.

    Each step is recorded at ``on_before_optimizer_step``: the gradient accumulated over
    ``accumulate_grad_batches``, AMP-unscaled and before gradient clipping. Per step it also stores the loss
    (the mean of the ``training_step`` losses over the accumulated micro-batches), ``lr``, ``epoch`` and the values
    logged with ``self.log(..., on_step=True)``. Steps are numbered by ``trainer.global_step``. Under DDP the
    statistics are those of the global batch and rank 0 writes the one run.

    Args:
        store: A :class:`~diagnostics.RunStore` or a folder path.
        run_name: Name of the run (default: the LightningModule's class name).
        **options: :class:`~diagnostics.GradientMonitor` options (``every``, ``layers``, ``histogram_every``,
            ``kernels``, ``meta``, ...); the model, optimizer, scaler, first step and distributed mode come
            from the Trainer.

    Attributes:
        run_id: The run's id once training has started (the same on every rank), else None.
    """

    def __init__(self, store: RunStore | str | os.PathLike[str] = "runs", run_name: str | None = None,
                 **options: Any) -> None:
        super().__init__()
        if not isinstance(store, (RunStore, str, os.PathLike)):
            raise MonitorError(f"store must be a RunStore or a folder path, got {type(store).__name__}")
        self.store = store
        self.run_name = run_name
        self.options = check_options(options)
        self.run_id: str | None = None
        self._session: Session | None = None
        self._stepped = False                      # an optimizer step was recorded in this training batch

    # -- the run opens and closes ------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        _check_strategy(trainer.strategy)
        if not pl_module.automatic_optimization:
            raise MonitorError("GradientFlowCallback supports automatic optimisation only (one optimizer, "
                               "stepped by Lightning); with manual optimisation (several optimizers, GANs) use "
                               "dx.GradientMonitor(model, optimizer=...) in training_step and call mon.step() "
                               "after self.manual_backward(loss)")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise MonitorError(f"GradientFlowCallback needs exactly one optimizer, the LightningModule has "
                               f"{len(trainer.optimizers)}")
        self._close("crashed", "a previous fit ended without on_train_end")     # never two runs at once
        world = int(trainer.world_size)
        framework = type(trainer).__module__.split(".")[0]
        meta = {
            "framework": framework, "gradients": "before clipping",
            "recorded_at": "on_before_optimizer_step (accumulated, AMP-unscaled, before clipping)",
            "accumulate_grad_batches": int(trainer.accumulate_grad_batches),
            "gradient_clip_val": trainer.gradient_clip_val, "precision": str(trainer.precision),
            "strategy": type(trainer.strategy).__name__, "world_size": world,
            **self.options.get("meta", {}),
        }
        options = {k: v for k, v in self.options.items() if k != "meta"}
        monitor = GradientMonitor(
            pl_module, store=store_for_rank(self.store, trainer.global_rank),
            run_name=self.run_name or type(pl_module).__name__, optimizer=trainer.optimizers[0],
            scaler=getattr(trainer.precision_plugin, "scaler", None), first_step=int(trainer.global_step),
            distributed=world > 1, meta=meta, **options)
        broadcast = None if world == 1 else (lambda run_id: trainer.strategy.broadcast(run_id, src=0))
        self._session = Session(monitor, broadcast)
        self.run_id = self._session.run_id
        self._stepped = False

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close("finished")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close("crashed", describe(exception))

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close("crashed", "fit ended without on_train_end")

    def _close(self, status: str, error: str | None = None) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close(status, error)

    # -- one optimizer step --------------------------------------------------------------------------------
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        if self._session is not None:
            self._session.add_loss(loss)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        session = self._session
        if session is None:
            return
        if session.backwards == 0:
            warnings.warn(f"step {trainer.global_step} ran no backward (training_step returned None?); it is not "
                          "recorded and the steps after it are numbered one lower", RuntimeWarning, stacklevel=2)
            return
        # Lightning divides each micro-batch's loss by accumulate_grad_batches before backward (also in a
        # shorter last window): times accumulate / micro-batches gives the mean of the training_step losses.
        micro = session.backwards
        loss = session.step_loss(scale=trainer.accumulate_grad_batches / micro)
        session.monitor.step(loss=loss, epoch=trainer.current_epoch, **learning_rates(optimizer))
        self._stepped = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._session is None or not self._stepped:
            return
        self._stepped = False
        logged = _step_metrics(trainer)
        if logged:
            self._session.monitor.annotate(**logged)


def _step_metrics(trainer: Any) -> dict[str, float]:
    """Scalar values logged in this training batch with ``on_step=True`` (never a validation value)."""
    results = getattr(trainer, "_results", None)          # the training loop's results while training
    if results is None:
        return {}
    values = results.metrics(True)["callback"]
    out: dict[str, float] = {}
    for key, value in values.items():
        if key in RESERVED_METRICS or key in ("epoch", "lr") or key.startswith("lr_group"):
            continue
        if key.endswith("_step") and key[:-len("_step")] in values:
            continue                                       # on_step and on_epoch: the same value twice
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value.detach().float().cpu())
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            out[key] = float(value)
    return out
