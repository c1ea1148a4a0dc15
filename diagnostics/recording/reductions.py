"""Per-step reductions of the parameters: every gradient and weight reduced to a few sums, queued for transfer.

Three paths, chosen per tensor: the fused one-pass CPU kernels (all eligible parameters of a step in one call,
which reads the gradients itself),
small float tensors reduced together as segments of one vector, and the PyTorch reductions of :mod:`.stats` for
everything else (accelerators, half precision, sparse gradients — reduced over their coalesced values —, tensor
subclasses).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import native, stats
from .buffers import Scratch, Transfer
from .distributed import is_sharded
from .layers import Param


@dataclass
class ParamSums:
    """Where one parameter's sums sit in the step's host array (-1: not read)."""

    grad: int                      # offset of [Σ|g|, Σg², max|g|]
    weight: int                    # offset of Σw²
    numel: int                     # dense element count of the whole parameter (mean |g| divides by it, also
                                   # for sparse gradients and FSDP2 shards)
    values: torch.Tensor | None    # the gradient values reduced (to count NaN/Inf on the rare host path)
    sharded: bool = False          # the sums are of this rank's shard only (FSDP2): combined across ranks


def gradient_values(g: torch.Tensor) -> torch.Tensor:
    """The values a gradient's statistics are taken over: the stored values of a sparse gradient."""
    if g.layout == torch.sparse_coo:
        return g.coalesce().values()
    if g.layout != torch.strided:
        return g.to_dense()
    return g


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2, tensor parallel); any other tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None and type(t).__name__ == "DTensor" else t


_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def _plain(t: torch.Tensor) -> bool:
    return type(t) in _PLAIN_TYPES and t.device.type != "meta"


@dataclass
class ParamBlock:
    """The parameters the fused kernels read in one call (``native.param_sums_of``): the (k, 4) rows
    [Σ|g|, Σg², max|g|, Σw²] of all k parameters given, at ``offset``; those of the others are NaN."""

    offset: int
    taken: np.ndarray              # (k,) bool: the parameter's row holds its sums
    weight_norms: bool             # Σw² was read


def queue_parameters(params: Sequence[Param], transfer: Transfer, *, fused: bool, weight_norms: bool,
                     weights_without_grad: set[str], histograms: bool, scratch: Scratch,
                     segment_ids: Callable[[tuple[int, ...], torch.device], torch.Tensor],
                     ) -> tuple[dict[str, ParamSums], ParamBlock | None, dict[str, list[int]]]:
    """Queue the sums of every parameter's gradient (and weight) into ``transfer``.

    Args:
        params: The parameters, each once.
        transfer: The step's host transfer.
        fused: Whether the fused CPU kernels may be used.
        weight_norms: Read Σw² of every parameter with a gradient.
        weights_without_grad: Parameters without a gradient whose Σw² is still wanted (rows that ran).
        histograms: Also queue log10|g| histograms, one per row's weight group.
        scratch: Reusable work buffers.
        segment_ids: Cached :func:`stats.segment_ids` by (sizes, device).

    Returns:
        Offsets per parameter name of those the fused kernels' one call did not read, that call's
        :class:`ParamBlock` (None without it), and per row the offsets of its weights' gradient histograms.
    """
    out: dict[str, ParamSums] = {}
    hist: dict[str, list[int]] = defaultdict(list)
    small: dict[torch.device, list[tuple[str, torch.Tensor, torch.Tensor, int, bool]]] = defaultdict(list)
    batched: dict[torch.dtype, list[tuple[str, torch.Tensor, torch.Tensor, int, bool]]] = defaultdict(list)
    block = None
    rest: Sequence[Param] = params
    with torch.no_grad():
        if fused and params:                               # the common case first: plain CPU gradients, one call
            sums, taken = native.param_sums_of([param.tensor for param in params], weight_norms)
            block = ParamBlock(transfer.add(sums), taken.numpy(), weight_norms)
            rest = [params[i] for i in np.flatnonzero(~block.taken).tolist()]
            for i in np.flatnonzero(block.taken).tolist() if histograms else ():
                if params[i].group == "weight":
                    hist[params[i].row].append(transfer.add(stats.log10_histogram(params[i].tensor.grad)))
        for param in rest:
            t = param.tensor
            g = t.grad
            p, name, numel, sharded = local(t.detach()), param.name, t.numel(), is_sharded(t)
            if g is None:
                if name in weights_without_grad:
                    out[name] = ParamSums(-1, transfer.add(stats.squared_norm(p)), numel, None, sharded)
                continue
            g = local(g)
            values = gradient_values(g)
            if histograms and param.group == "weight":
                hist[param.row].append(transfer.add(stats.log10_histogram(values)))   # summed per row later
            if fused and values is g and native.eligible_pair(g, p):
                batched[g.dtype].append((name, g, p, numel, sharded))   # all CPU parameters in one pass, below
                continue
            if values is g and _plain(g) and 0 < g.numel() <= stats.BATCH_NUMEL \
                    and g.dtype in (torch.float32, torch.float64):
                small[g.device].append((name, g, p, numel, sharded))    # reduced below, all at once
                continue
            w_off = transfer.add(stats.squared_norm(p)) if weight_norms else -1
            sums = stats.gradient_sums(values, scratch.like(values))
            out[name] = ParamSums(transfer.add(sums), w_off, numel, values, sharded)
        for items in batched.values():
            sums = native.param_sums([g for _, g, _, _, _ in items],
                                     [w if weight_norms else None for _, _, w, _, _ in items])  # (k, 4)
            off = transfer.add(sums)
            for i, (name, g, _, numel, sharded) in enumerate(items):
                out[name] = ParamSums(off + 4 * i, off + 4 * i + 3 if weight_norms else -1, numel, g, sharded)
        for device, items in small.items():
            ids = segment_ids(tuple(g.numel() for _, g, _, _, _ in items), device)
            g_off = transfer.add(stats.gradient_sums_batched([g for _, g, _, _, _ in items], ids))  # (k, 3)
            w_off = transfer.add(stats.squared_norms_batched([w for _, _, w, _, _ in items], ids)) \
                if weight_norms else -1
            for i, (name, g, _, numel, sharded) in enumerate(items):
                out[name] = ParamSums(g_off + 3 * i, w_off + i if w_off >= 0 else -1, numel, g, sharded)
    return out, block, hist
