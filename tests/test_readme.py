"""The README's Python blocks run, so what it shows stays true.

A block runs when the line before its fence is ``<!-- run -->`` or ``<!-- run: <setup> -->``: the named setup
below runs first (it makes the names the block takes from the reader's own code: a model, a loader, a file),
and :data:`SCALED` shrinks the README's real-size arguments so that the whole file runs in seconds. Each block
runs in a fresh process inside a temporary folder (the README writes ``runs/`` and ``model.pt`` there).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- run(?::\s*(?P<setup>[\w-]+))? -->\n```python\n(?P<code>.*?)```", re.S)

#: What the README leaves to the reader's code, per setup name.
SETUPS = {
    "": "import diagnostics as dx",
    "training-loop": """
        import torch
        from torch import nn
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss_fn = nn.CrossEntropyLoss()
        loader = [(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(3)]
        acc = 0.5
    """,
    "checkpoint": """
        import torch
        import diagnostics as dx
        config = dx.variant_config("plain", depth=3, width=4)
        dx.save_checkpoint(dx.build_cnn(config), config, "model.pt")      # this project's CNN, rebuilt from the file
    """,
}
#: The README's real sizes, and the small ones the test runs with.
SCALED = {"depth=20": "depth=3", "steps=300": "steps=2"}
#: What each block must leave true (checked after it ran), by the block's first code line.
CHECKS = {
    "import diagnostics as dx": "assert len(frame) and len(steps) == 3 and len(params)",
    "runs = dx.compare(": "assert set(runs) == {'plain', 'batchnorm', 'residual', 'residual+batchnorm'}",
    "ckpt = dx.load_checkpoint(": "assert ckpt.format == 'project_checkpoint' and result.run_id and len(result.frame)",
    "import torch": "assert set(grads) == {'input', 'weight', 'bias'} and formulas",
}


def blocks() -> list[tuple[str, str]]:
    found = [(m["setup"] or "", m["code"]) for m in BLOCK.finditer(README.read_text())]
    assert len(found) >= 4, "the README lost its tagged Python blocks"
    return found


def scaled(code: str) -> str:
    for real, small in SCALED.items():
        code = code.replace(real, small)
    return code


@pytest.mark.parametrize("setup,code", blocks(), ids=lambda v: v.splitlines()[0][:40] if "\n" in v else v or "none")
def test_readme_block_runs(setup, code, tmp_path):
    check = next((c for start, c in CHECKS.items() if code.startswith(start)), "")
    program = "\n".join([textwrap.dedent(SETUPS[setup]), scaled(code), check])
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, f"{program}\n--- stderr ---\n{result.stderr[-3000:]}"
