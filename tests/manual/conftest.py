"""Fixtures of the manual-gradient tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The tensors here are tiny: intra-op threads only add OpenMP waits, which grow to milliseconds per
    # operator when other processes keep the cores busy. The thread count is restored after each test.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
