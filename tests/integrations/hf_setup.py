"""Tiny GPT-2 and BERT from configs (no downloads), their data, and a Trainer that copies, in float64, what each
optimizer step saw: p.grad just before clipping and just after it, W before and after the optimizer step.

Used by the pytest tests and by the torchrun script.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, Trainer,
                          TrainerCallback, TrainingArguments)

MAX_GRAD_NORM = 0.05        # below every pre-clip norm of these tiny models: clipping acts on every step


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=2)
    return BertForSequenceClassification(config)


class Tokens(Dataset):
    """Random token sequences; ``labels`` are the tokens (language modelling) or one class per sequence."""

    def __init__(self, n: int = 32, length: int = 12, classify: bool = False) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 64, (n, length), generator=g)              # (N, T)
        self.classes = torch.randint(0, 2, (n,), generator=g)                   # (N,)
        self.classify = classify

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.classes[i] if self.classify else self.ids[i]}


def arguments(out: str, **overrides: Any) -> TrainingArguments:
    args = dict(output_dir=out, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=4,
                max_grad_norm=MAX_GRAD_NORM, learning_rate=1e-3, logging_steps=1, report_to="none",
                save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    return TrainingArguments(**{**args, **overrides})


class CapturingTrainer(Trainer):
    """A Trainer that copies the gradients right before its own clipping (an override of the class method)."""

    def __init__(self, *args: Any, fail_at: tuple[int, int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pre_clip: dict[int, dict[str, torch.Tensor]] = {}
        self.micro_losses: dict[int, list[float]] = {}
        self.fail_at = fail_at               # (global step, micro-batch) at which compute_loss raises

    def _clip_grad_norm(self, model: Any) -> Any:
        self.pre_clip[self.state.global_step] = {n: p.grad.detach().double().clone()
                                                 for n, p in self.model.named_parameters() if p.grad is not None}
        return super()._clip_grad_norm(model)

    def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        losses = self.micro_losses.setdefault(self.state.global_step, [])
        if self.fail_at == (self.state.global_step, len(losses)):
            raise ValueError(f"user error at step {self.state.global_step}")
        losses.append(0.0)
        return super().compute_loss(model, inputs, *args, **kwargs)


class Capture(TrainerCallback):
    """Copies p.grad at on_pre_optimizer_step (after clipping) and W before/after each optimizer step."""

    def __init__(self) -> None:
        self.post_clip: dict[int, dict[str, torch.Tensor]] = {}
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}
        self.lr: dict[int, float] = {}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                              **kwargs: Any) -> None:
        step = state.global_step
        self.post_clip[step] = {n: p.grad.detach().double().clone() for n, p in model.named_parameters()
                                if p.grad is not None}
        self.before[step] = {n: p.detach().double().clone() for n, p in model.named_parameters()}
        self.lr[step] = optimizer.param_groups[0]["lr"]

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.after[state.global_step] = {n: p.detach().double().clone() for n, p in model.named_parameters()}


def logged(trainer: Trainer) -> dict[int, dict[str, float]]:
    """The Trainer's own per-step logs, keyed by the recorded step (the log's step is one after it)."""
    return {entry["step"] - 1: entry for entry in trainer.state.log_history if "loss" in entry}
