"""Gradient Flow Diagnostics: record, prove and show how gradients flow through PyTorch models."""

from __future__ import annotations

from .recording import stats
from .errors import CheckpointError, DiagnosticsError, MonitorError, NonFiniteGradientError, StoreError
from .recording import GradientMonitor
from .store import RunStore, RunWriter
from .checkpoints.loading import Checkpoint, load_checkpoint
from .checkpoints.architecture import BuiltModel, build_model, rebuild
from .checkpoints.probe import ProbeError, ProbeResult, probe
from .experiments.data import DataError, DataSplit, load_dataset
from .experiments.models import CNNConfig, ModelConfigError, build_cnn, load_project_checkpoint, save_checkpoint, variant_config
from .experiments.training import ComparisonJob, TrainConfig, TrainingError, compare

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
    "BuiltModel",
    "Checkpoint",
    "ProbeError",
    "ProbeResult",
    "build_model",
    "load_checkpoint",
    "probe",
    "rebuild",
    "CNNConfig",
    "ComparisonJob",
    "DataError",
    "DataSplit",
    "ModelConfigError",
    "TrainConfig",
    "TrainingError",
    "build_cnn",
    "compare",
    "load_dataset",
    "load_project_checkpoint",
    "save_checkpoint",
    "variant_config",
]
