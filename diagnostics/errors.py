"""The library's own exceptions: one small hierarchy, messages that say what to do."""

from __future__ import annotations


class DiagnosticsError(Exception):
    """Base class of every error raised on purpose by :mod:`diagnostics`."""


class MonitorError(DiagnosticsError, RuntimeError):
    """A :class:`~diagnostics.GradientMonitor` was used in a way it cannot support."""


class NonFiniteGradientError(DiagnosticsError, FloatingPointError):
    """A NaN or Inf appeared while the monitor runs with ``on_nonfinite="raise"``.

    Attributes:
        step: The recorded step at which the value appeared.
        layer: The qualified name of the first layer (in forward order for the forward pass,
            in backward order for the backward pass) that held the value.
        phase: ``"forward"`` or ``"backward"``.
    """

    def __init__(self, message: str, *, step: int, layer: str, phase: str) -> None:
        super().__init__(message)
        self.step = step
        self.layer = layer
        self.phase = phase


class StoreError(DiagnosticsError, ValueError):
    """A run store or run could not be read or written (missing run, bad name, unreadable files)."""


class CheckpointError(DiagnosticsError, ValueError):
    """A checkpoint file could not be loaded safely or its architecture could not be rebuilt."""
