"""A transformers Trainer under torchrun with 2 CPU processes and an attached GradientFlowCallback; each rank
saves what it saw. ``torchrun --nproc_per_node 2 tests/integrations/scripts/hf_ddp.py STORE OUT``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from diagnostics.integrations.huggingface import GradientFlowCallback
from tests.conftest import hook_state
from tests.integrations.hf_setup import Capture, CapturingTrainer, Tokens, arguments, gpt2, logged


def main(store: str, out: str) -> None:
    model, capture = gpt2(), Capture()
    clean = hook_state(model)
    trainer = CapturingTrainer(model=model, args=arguments(str(Path(out) / "trainer"), ddp_backend="gloo"),
                               train_dataset=Tokens(), callbacks=[capture])
    callback = GradientFlowCallback(store=store, run_name="ddp").attach(trainer)
    trainer.train()
    now = hook_state(model)
    hooks_left = {k: v for k, v in now.items() if k} != {k: v for k, v in clean.items() if k} or \
        now[""][:4] != clean[""][:4]
    rank = trainer.args.process_index
    torch.save({"run_id": callback.run_id, "world_size": trainer.args.world_size, "pre_clip": trainer.pre_clip,
                "before": capture.before, "after": capture.after, "logs": logged(trainer), "hooks_left": hooks_left},
               Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:3])
