"""Kernel snapshots: the full ∂L/∂W, W and ΔW of a few conv layers every few steps, within a size budget."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..store import RunWriter


class KernelSnapshots:
    """Chooses the conv layers to snapshot, takes the arrays and keeps the run's snapshots within budget.

    When the next snapshot would exceed the budget, every other stored snapshot is deleted and the rate
    halves, so the snapshots keep covering the whole run (the rate in force is kept in the run's metadata).
    """

    def __init__(self, wanted: Sequence[str] | str, every: int, max_mb: float,
                 weight_of: Callable[[str], torch.nn.Parameter | None]) -> None:
        self.wanted = wanted
        self.every = every
        self.max_bytes = int(max_mb * 2**20)
        self._weight_of = weight_of                 # row name -> its conv weight (None when it has none)
        self.layers: list[str] | None = None
        self._bytes = 0
        self._sizes: list[tuple[int, int]] = []
        self._stopped = False

    def due(self, step: int) -> bool:
        return not self._stopped and step % self.every == 0

    def _is_kernel(self, layer: str) -> bool:
        p = self._weight_of(layer)
        # A sharded (FSDP2) weight is not snapshotted: its full ∂L/∂W would need a gather of the whole tensor.
        return p is not None and p.dim() >= 3 and p.requires_grad and type(p).__name__ != "DTensor"

    def _choose(self, by_depth: list[str], writer: RunWriter | None) -> None:
        convs = [n for n in by_depth if self._is_kernel(n)]
        if self.wanted == "auto":
            self.layers = list(dict.fromkeys([convs[0], convs[len(convs) // 2], convs[-1]] if convs else []))
        else:
            wanted = list(self.wanted or [])
            unknown = [n for n in wanted if not self._is_kernel(n)]
            if unknown:
                warnings.warn(f"kernel snapshots: {unknown} are not conv layers with a weight gradient in this "
                              f"model; conv layers are {convs}", RuntimeWarning, stacklevel=5)
            self.layers = [n for n in wanted if n not in unknown]
        if writer is not None:
            writer.meta["kernel_layers"] = self.layers

    def take(self, step: int, by_depth: list[str], weight_scale: float, with_update: bool,
             writer: RunWriter | None) -> dict[str, dict[str, np.ndarray]]:
        """The arrays of this step's snapshot ({layer: {"grad", "weight"}}), or {} when none is taken."""
        if self.layers is None:
            self._choose(by_depth, writer)
        arrays: dict[str, dict[str, np.ndarray]] = {}
        size = 0
        for layer in self.layers:
            p = self._weight_of(layer)
            if p is None or p.grad is None:
                continue
            grad = (p.grad.detach().float() / weight_scale).cpu().numpy()
            weight = p.detach().float().cpu().numpy().copy()     # never a view of the live weights
            arrays[layer] = {"grad": grad, "weight": weight}
            size += grad.nbytes * (3 if with_update else 2)
        if size > self.max_bytes:
            self._stopped = True
            msg = (f"kernel snapshots off: one snapshot of {self.layers} takes {size / 2**20:.1f} MB, over the "
                   f"{self.max_bytes / 2**20:.0f} MB budget (raise kernel_max_mb or choose smaller layers with "
                   "kernels=[...])")
            warnings.warn(msg, RuntimeWarning, stacklevel=5)
            if writer is not None:
                writer.meta["kernel_snapshots_stopped"] = msg
            return {}
        while self._bytes + size > self.max_bytes and self._sizes:
            # Over budget: keep every other snapshot and halve the rate, so the run stays covered end to end.
            dropped = self._sizes[1::2]
            self._sizes = self._sizes[0::2]
            self._bytes = sum(s for _, s in self._sizes)
            self.every *= 2
            if writer is not None:
                writer.delete_kernels([s for s, _ in dropped])
                writer.meta["kernel_every"] = self.every
            if step % self.every != 0:
                return {}
        self._bytes += size
        self._sizes.append((step, size))
        return arrays
