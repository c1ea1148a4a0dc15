"""Tests of diagnostics.views."""
