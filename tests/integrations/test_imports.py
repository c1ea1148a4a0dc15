"""The integrations are optional: importing diagnostics imports no framework, and an integration whose
framework is missing says what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integrations.launch import ROOT


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_diagnostics_imports_no_framework() -> None:
    done = python("import sys, diagnostics, diagnostics.integrations\n"
                  "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', 'accelerate') "
                  "if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("module, blocked, install", [
    pytest.param("lightning", ("lightning", "pytorch_lightning"), "pip install lightning", id="lightning"),
    pytest.param("huggingface", ("transformers",), "pip install transformers accelerate", id="huggingface"),
])
def test_a_missing_framework_says_what_to_install(module: str, blocked: tuple[str, ...], install: str) -> None:
    block = "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)      # as if it were not installed
    done = python(f"import sys\n{block}import diagnostics.integrations.{module}")
    assert done.returncode != 0
    assert "ImportError" in done.stderr and install in done.stderr, done.stderr[-2000:]
