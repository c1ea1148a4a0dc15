"""The exceptions raised on purpose by :mod:`diagnostics.manual`."""

from __future__ import annotations


class ManualGradError(ValueError):
    """A manual gradient cannot be computed for these arguments (wrong shape, dtype or size)."""


class UnsupportedModuleError(ManualGradError):
    """No manual backward rule exists for this module type or this configuration of it."""
