"""Tests of diagnostics.manual: hand-written backward passes against autograd and finite differences."""
