"""Gradient Flow Diagnostics: record, prove and show how gradients flow through PyTorch models.

The public API, used as ``import diagnostics as dx``. The parts, one package each (see ARCHITECTURE.md):
``recording`` (the monitor), ``store`` (runs on disk), ``manual`` (hand-written backward passes),
``experiments`` (CNN family, data, training, comparisons), ``checkpoints`` (safe loading, architecture, probe),
``views`` (data -> figures for the dashboard and reports) and ``integrations``. ``manual``, ``views`` and
``integrations`` are imported on first use (``dx.manual.backward(...)`` works right after ``import
diagnostics``), so importing the library stays fast and never imports streamlit, transformers, timm or
Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .checkpoints.architecture import BuiltModel, build_model, load_project_checkpoint, rebuild
from .checkpoints.loading import Checkpoint, load_checkpoint
from .checkpoints.probing import ProbeResult, probe
from .errors import (CheckpointError, DataError, DiagnosticsError, ManualGradError, ModelConfigError, MonitorError,
                     NonFiniteGradientError, ProbeError, StoreError, TrainingError)
from .experiments.data import DataSplit, load_dataset
from .experiments.jobs import ComparisonJob
from .experiments.models import CNNConfig, build_cnn, save_checkpoint, variant_config
from .experiments.launch import compare
from .experiments.training import TrainConfig
from .recording import GradientMonitor, stats
from .store import RunStore, RunWriter

if TYPE_CHECKING:
    from . import integrations, manual, views
    from .views.diagnosis import Finding, Thresholds, findings

__version__ = "0.1.0"

#: Subpackages imported on first attribute access (``dx.manual``), not by ``import diagnostics``.
_LAZY_SUBPACKAGES = ("manual", "views", "integrations")


#: Public names defined in a lazily imported module: ``dx.findings(run, store=store)`` loads the views on first use.
_LAZY_NAMES = {"findings": "views.diagnosis", "Finding": "views.diagnosis", "Thresholds": "views.diagnosis"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBPACKAGES) | set(_LAZY_NAMES))


__all__ = [
    "BuiltModel",
    "CNNConfig",
    "Checkpoint",
    "CheckpointError",
    "ComparisonJob",
    "DataError",
    "DataSplit",
    "DiagnosticsError",
    "Finding",
    "GradientMonitor",
    "ManualGradError",
    "ModelConfigError",
    "MonitorError",
    "NonFiniteGradientError",
    "ProbeError",
    "ProbeResult",
    "RunStore",
    "RunWriter",
    "StoreError",
    "Thresholds",
    "TrainConfig",
    "TrainingError",
    "__version__",
    "build_cnn",
    "build_model",
    "compare",
    "findings",
    "integrations",
    "load_checkpoint",
    "load_dataset",
    "load_project_checkpoint",
    "manual",
    "probe",
    "rebuild",
    "save_checkpoint",
    "stats",
    "variant_config",
    "views",
]
