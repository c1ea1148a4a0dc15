"""Packaging rules: the library never imports streamlit; the public API is what the README shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import diagnostics as dx

ROOT = Path(__file__).resolve().parents[1]


def test_import_diagnostics_does_not_import_streamlit():
    code = ("import sys, diagnostics, diagnostics.cli, diagnostics.views.export; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit'); "
            "print(bad); raise SystemExit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_library_file_mentions_streamlit_imports():
    for path in (ROOT / "diagnostics").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import streamlit", "from streamlit")), path


def test_public_api_is_exported():
    for name in ("GradientMonitor", "RunStore", "MonitorError", "StoreError", "CheckpointError",
                 "NonFiniteGradientError", "DiagnosticsError"):
        assert name in dx.__all__ and hasattr(dx, name)
