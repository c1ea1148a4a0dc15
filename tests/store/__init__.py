"""Tests of diagnostics.store."""
