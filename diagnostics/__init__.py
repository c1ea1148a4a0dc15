"""Gradient Flow Diagnostics: record, prove and show how gradients flow through PyTorch models."""

from __future__ import annotations

from . import stats
from .errors import CheckpointError, DiagnosticsError, MonitorError, NonFiniteGradientError, StoreError
from .monitor import GradientMonitor
from .store import RunStore, RunWriter

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DiagnosticsError",
    "GradientMonitor",
    "MonitorError",
    "NonFiniteGradientError",
    "RunStore",
    "RunWriter",
    "StoreError",
    "stats",
    "__version__",
]
