"""Tests of diagnostics.checkpoints."""
