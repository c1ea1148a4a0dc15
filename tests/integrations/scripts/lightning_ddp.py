"""Lightning strategy="ddp" with 2 CPU processes and GradientFlowCallback; each rank saves what it saw.

Run as a standalone script (Lightning's ddp re-launches this command for rank 1):
``python tests/integrations/scripts/lightning_ddp.py STORE OUT PACKAGE``. Writes ``OUT/rank{r}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from diagnostics.integrations.lightning import GradientFlowCallback
from tests.conftest import hook_state
from tests.integrations.lightning_setup import data, load, make_capture, make_module

CLIP = 0.05


def main(store: str, out: str, package: str) -> None:
    pl = load(package)
    torch.manual_seed(0)
    module, capture = make_module(package), make_capture(package)
    clean = hook_state(module)
    callback = GradientFlowCallback(store=store, run_name="ddp")
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, accumulate_grad_batches=2,
                         gradient_clip_val=CLIP, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback, capture])
    trainer.fit(module, data())
    now = hook_state(module)
    hooks_left = {k: v for k, v in now.items() if k} != {k: v for k, v in clean.items() if k} or \
        now[""][:4] != clean[""][:4]
    torch.save({"rank": trainer.global_rank, "run_id": callback.run_id, "grads": capture.grads,
                "before": capture.before, "after": capture.after, "clipped_norm": capture.clipped_norm,
                "losses": module.losses, "logit_sums": module.logit_sums, "hooks_left": hooks_left,
                "global_step": trainer.global_step},
               Path(out) / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:4])
