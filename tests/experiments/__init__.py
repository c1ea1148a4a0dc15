"""Tests of diagnostics.experiments."""
