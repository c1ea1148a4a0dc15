"""Every kind of tensor through the monitor on both reduction paths, in a separate process: none crashes it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("scripts") / "tensor_kinds.py"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_tensor_kind_crashes_the_process_or_is_read_wrongly():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(SCRIPT), str(free_port())], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]     # a crash ends with a signal
    lines = done.stdout.splitlines()
    assert lines[-1] == "done"
    bad = [line for line in lines if line.startswith(("error", "unexpected"))]
    assert not bad, bad
    for kind in ("channels-last", "sparse", "zero-size", "bfloat16", "float16", "meta", "subclass",
                 "non-contiguous-grad", "dtensor-fsdp2"):
        for fused in (True, False):
            assert any(line.startswith(f"ok monitor fused={fused} {kind}:") for line in lines), (kind, fused)
