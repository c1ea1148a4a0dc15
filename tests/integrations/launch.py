"""Run a script of tests/integrations/scripts in fresh processes (one thread each), as a user would launch it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, torchrun: int = 0, timeout: int = 240) -> None:
    """``python scripts/<name> ARGS`` (or ``torchrun --nproc_per_node N``); fails the test on a non-zero exit."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun)] if torchrun \
        else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [*launcher, str(ROOT / "tests" / "integrations" / "scripts" / name), *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
