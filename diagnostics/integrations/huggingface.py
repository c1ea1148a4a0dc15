"""Hugging Face ``Trainer``: ``GradientFlowCallback`` records every optimizer step of ``trainer.train()``.

One line, recording before clipping and marking a crashed run::

    GradientFlowCallback(store="runs").attach(trainer)

or, recording after clipping (a plain ``TrainerCallback`` sees nothing earlier, and never sees an exception)::

    trainer = Trainer(model=model, args=args, callbacks=[GradientFlowCallback(store="runs")], ...)

Where in the Trainer's step it reads what::

    training_step(micro-batch) -> accelerator.backward           (x gradient_accumulation_steps)
        attach(): each returned loss is kept (the Trainer adds the same values up for its logged ``loss``)
    _clip_grad_norm(model)        <- attach(): recorded here, accumulated and before clipping; an AMP scaler's
                                     scale is divided out (the gradient ``grad_norm`` is logged from)
    on_pre_optimizer_step         <- callbacks=[cb] alone: recorded here, after clipping (and whenever
                                     max_grad_norm=0, so nothing was clipped)
    optimizer.step()              <- update_ratio from the optimizer's step hooks
    on_log                        <- callbacks=[cb] alone: the logged loss when it covers exactly this step

``attach(trainer)`` replaces three attributes of that one trainer instance (``train``, ``training_step``,
``_clip_grad_norm``) with wrappers that call the originals; the class and other trainers are untouched.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any

from ..errors import MonitorError
from ..recording import GradientMonitor
from ..store import RunStore
from .session import Session, check_options, describe, learning_rates, missing, store_for_rank

try:
    from transformers import TrainerCallback
except ModuleNotFoundError as exc:                 # only a missing transformers itself is an install hint
    if exc.name is None or exc.name.split(".")[0] != "transformers":
        raise
    raise missing("Hugging Face transformers", "transformers accelerate") from exc

#: Trainer attributes attach() wraps on the one trainer instance it is given.
WRAPPED: tuple[str, ...] = ("train", "training_step", "_clip_grad_norm")


def _refuse_unsupported(args: Any, trainer: Any = None) -> None:
    """DeepSpeed, FSDP and DataParallel give a p.grad that is not the gradient the optimizer uses (or hide it)."""
    deepspeed = bool(getattr(args, "deepspeed", None)) or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" \
        or bool(getattr(trainer, "is_deepspeed_enabled", False))
    fsdp = bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP") == "true" \
        or bool(getattr(trainer, "is_fsdp_enabled", False))
    if deepspeed:
        raise MonitorError("GradientFlowCallback does not support DeepSpeed: it partitions gradients and steps the "
                           "optimizer itself, so p.grad is not the gradient the optimizer uses. Record with DDP "
                           "(torchrun / accelerate launch without DeepSpeed) instead")
    if fsdp:
        raise MonitorError("GradientFlowCallback does not support FSDP: every rank holds only a shard of the "
                           "parameters and gradients. Record with DDP (torchrun / accelerate launch) instead")
    if int(getattr(args, "n_gpu", 1) or 1) > 1 and int(getattr(args, "world_size", 1) or 1) == 1:
        raise MonitorError("GradientFlowCallback does not support nn.DataParallel (several GPUs in one process): "
                           "launch one process per GPU with torchrun or accelerate launch")


def _broadcast_from_rank0(run_id: str | None) -> str | None:
    import torch.distributed as dist

    box = [run_id]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class GradientFlowCallback(TrainerCallback):
    """Record per-layer gradient statistics of every optimizer step of a Hugging Face ``Trainer``.

    Per step it stores the gradient statistics, ``loss`` (equal to the Trainer's logged ``loss`` at
    ``logging_steps=1``: the sum of the step's ``training_step`` values, averaged over processes), ``lr`` and
    ``epoch`` (the Trainer's fractional epoch once the step is done, as it logs it). Steps are numbered by
    ``state.global_step``. Under DDP (torchrun, ``accelerate launch``) the statistics are those of the global
    batch and rank 0 writes the one run.

    Args:
        store: A :class:`~diagnostics.RunStore` or a folder path.
        run_name: Name of the run (default: the model's class name).
        **options: :class:`~diagnostics.GradientMonitor` options (``every``, ``layers``, ``histogram_every``,
            ``kernels``, ``meta``, ...); the model, optimizer, scaler, first step and distributed mode come
            from the Trainer.

    Attributes:
        run_id: The run's id once training has started (the same on every rank), else None.
    """

    def __init__(self, store: RunStore | str | os.PathLike[str] = "runs", run_name: str | None = None,
                 **options: Any) -> None:
        if not isinstance(store, (RunStore, str, os.PathLike)):
            raise MonitorError(f"store must be a RunStore or a folder path, got {type(store).__name__}")
        self.store = store
        self.run_name = run_name
        self.options = check_options(options)
        self.run_id: str | None = None
        self._trainer: Any = None                  # the trainer attach() wrapped, if any
        self._session: Session | None = None
        self._recorded_at: int | None = None       # global step recorded last
        self._logged_at = 0                        # global step of the Trainer's last loss log

    # -- attach ----------------------------------------------------------------------------------------------
    def attach(self, trainer: Any) -> GradientFlowCallback:
        """Add this callback to ``trainer`` (if not there yet) and wrap that trainer's ``train`` (a crash marks the
        run and removes every hook), ``training_step`` (each micro-batch's loss) and ``_clip_grad_norm`` (the
        step is recorded before clipping). Returns the callback."""
        if self._trainer is trainer:
            return self
        if self._trainer is not None:
            raise MonitorError("this GradientFlowCallback is already attached to another Trainer; make one per "
                               "Trainer")
        missing_attrs = [name for name in WRAPPED if not callable(getattr(trainer, name, None))]
        if missing_attrs:
            raise MonitorError(f"attach() needs Trainer.{', '.join(missing_attrs)} (transformers >= 5.0); with "
                               "callbacks=[GradientFlowCallback(...)] alone the gradients are recorded after "
                               "clipping")
        _refuse_unsupported(trainer.args, trainer)
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        original = {name: getattr(trainer, name) for name in WRAPPED}

        @functools.wraps(original["train"])
        def train(*args: Any, **kwargs: Any) -> Any:
            try:
                return original["train"](*args, **kwargs)
            except BaseException as exc:
                self._close("crashed", describe(exc))
                raise
            finally:
                self._close("crashed", "train() returned without on_train_end")   # no-op after on_train_end

        @functools.wraps(original["training_step"])
        def training_step(*args: Any, **kwargs: Any) -> Any:
            loss = original["training_step"](*args, **kwargs)
            if self._session is not None:
                self._session.add_loss(loss)
            return loss

        @functools.wraps(original["_clip_grad_norm"])
        def clip_grad_norm(*args: Any, **kwargs: Any) -> Any:
            self._record(trainer.state, trainer.optimizer)
            return original["_clip_grad_norm"](*args, **kwargs)

        trainer.train, trainer.training_step, trainer._clip_grad_norm = train, training_step, clip_grad_norm
        self._trainer = trainer
        return self

    # -- the run opens and closes ----------------------------------------------------------------------------
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _refuse_unsupported(args)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        _refuse_unsupported(args, self._trainer)
        self._close("crashed", "a previous train() ended without on_train_end (an exception the callback could "
                               "not see: use attach(trainer))")
        attached = self._trainer is not None
        clipping = float(args.max_grad_norm or 0) > 0
        if not attached and clipping:
            warnings.warn(f"GradientFlowCallback was given in callbacks= only: it records the gradients after "
                          f"clipping to max_grad_norm={args.max_grad_norm}, takes the loss from the Trainer's logs "
                          "(only at logging_steps=1) and cannot mark a crashed run. Use "
                          "GradientFlowCallback(...).attach(trainer) to record before clipping",
                          RuntimeWarning, stacklevel=2)
        world = int(args.world_size)
        if attached:
            where = "Trainer._clip_grad_norm (accumulated, unscaled, before clipping)"
        else:
            where = "on_pre_optimizer_step (accumulated" + (", after clipping)" if clipping else ")")
        meta = {
            "framework": "transformers", "gradients": "after clipping" if clipping and not attached
            else "before clipping", "recorded_at": where, "attached": attached, "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
            "max_grad_norm": float(args.max_grad_norm or 0), "world_size": world,
            **self.options.get("meta", {}),
        }
        options = {k: v for k, v in self.options.items() if k != "meta"}
        monitor = GradientMonitor(
            model, store=store_for_rank(self.store, int(args.process_index)),
            run_name=self.run_name or type(model).__name__, optimizer=optimizer,
            scaler=getattr(optimizer, "scaler", None), first_step=int(state.global_step), distributed=world > 1,
            meta=meta, **options)
        self._session = Session(monitor, _broadcast_from_rank0 if world > 1 else None)
        self.run_id = self._session.run_id
        self._recorded_at = None
        self._logged_at = int(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close("finished")

    def _close(self, status: str, error: str | None = None) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close(status, error)

    # -- one optimizer step ----------------------------------------------------------------------------------
    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                              **kwargs: Any) -> None:
        self._record(state, optimizer)

    def _record(self, state: Any, optimizer: Any) -> None:
        """Record the step in progress once (before clipping when attached, else at on_pre_optimizer_step)."""
        session = self._session
        if session is None or self._recorded_at == state.global_step:
            return
        self._recorded_at = state.global_step
        loss = session.step_loss() if self._trainer is not None else None
        session.monitor.step(loss=loss, **learning_rates(optimizer))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._session is not None:
            self._session.monitor.annotate(epoch=float(state.epoch))     # the Trainer's own (fractional) epoch

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if not logs or "loss" not in logs:
            return
        covers_one_step = state.global_step - self._logged_at == 1
        self._logged_at = state.global_step
        if self._session is not None and self._trainer is None and covers_one_step:
            self._session.monitor.annotate(loss=float(logs["loss"]))
