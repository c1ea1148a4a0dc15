"""Statistics of one tensor: device-side reductions and the small host-side formulas built on them.

The monitor reduces every recorded tensor to a handful of sums *on the tensor's device* (one pass per sum,
no ``.item()`` per layer on accelerators) and moves all sums of a step to the host at once. Statistics of a
layer that ran several times in one step are pooled by adding the sums of every call (and taking the largest
maximum), so ``act_grad_norm`` is the root of the summed squares of all its output gradients.

Everything that names a statistic lives here, once: :data:`LAYER_COLUMNS`, :data:`STEP_COLUMNS`,
:data:`PARAM_COLUMNS` and :data:`STAT_LABELS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

# --- names ------------------------------------------------------------------------------------------------

#: Columns of the per-(step, layer) table, in order.
LAYER_COLUMNS: tuple[str, ...] = (
    "run", "step", "layer", "type", "kind", "depth", "calls",
    "weight_grad_norm", "weight_grad_mean_abs", "weight_grad_max_abs", "bias_grad_norm",
    "weight_norm", "update_ratio",
    "act_grad_norm", "act_grad_mean_abs", "act_grad_max_abs",
    "act_mean", "act_std", "act_zero_frac", "units", "dead_units",
    "nonfinite", "act_nonfinite", "act_grad_nonfinite", "weight_grad_nonfinite",
    "shared_with", "in_optimizer",
)

#: Columns of the per-step table (metrics given to ``step()`` are added as extra columns).
STEP_COLUMNS: tuple[str, ...] = (
    "run", "step", "time", "loss", "grad_norm_total", "grad_scale",
    "nonfinite_forward_layer", "nonfinite_backward_layer", "input_nonfinite", "loss_nonfinite",
)

#: Columns of the per-(step, parameter) table.
PARAM_COLUMNS: tuple[str, ...] = (
    "run", "step", "param", "layer", "shape", "numel",
    "grad_norm", "grad_mean_abs", "grad_max_abs", "norm", "update_ratio", "nonfinite", "in_optimizer",
)

#: Columns of the per-(step, block) table of backward gains (see diagnostics.recording.blocks).
BLOCK_COLUMNS: tuple[str, ...] = (
    "run", "step", "block", "type", "depth", "calls", "residual",
    "in_grad_norm", "out_grad_norm", "gain", "branch_share",
)

#: Columns of the histogram table: ``counts`` holds one count per bin of :data:`HIST_EDGES`.
HIST_COLUMNS: tuple[str, ...] = ("run", "step", "layer", "kind", "counts", "zeros", "nonfinite", "log10_scale")

#: Human labels (with units) for the statistics, used by plots and pages.
STAT_LABELS: dict[str, str] = {
    "weight_grad_norm": "weight-gradient L2 norm ‖∂L/∂W‖",
    "weight_grad_mean_abs": "weight-gradient mean |∂L/∂W|",
    "weight_grad_max_abs": "weight-gradient max |∂L/∂W|",
    "bias_grad_norm": "bias-gradient L2 norm ‖∂L/∂b‖",
    "weight_norm": "weight L2 norm ‖W‖",
    "update_ratio": "update ratio ‖ΔW‖/‖W‖",
    "act_grad_norm": "activation-gradient L2 norm ‖∂L/∂Y‖",
    "act_grad_mean_abs": "activation-gradient mean |∂L/∂Y|",
    "act_grad_max_abs": "activation-gradient max |∂L/∂Y|",
    "act_mean": "activation mean",
    "act_std": "activation standard deviation",
    "act_zero_frac": "fraction of zero activations",
    "units": "units along the output's unit axis (channels or features)",
    "dead_units": "fraction of units never active over the window (dead units)",
    "nonfinite": "count of NaN/Inf values",
    "loss": "loss",
    "grad_norm_total": "global gradient L2 norm",
    "gain": "backward gain ‖∂L/∂x‖/‖∂L/∂y‖ of a block",
    "branch_share": "share of ∂L/∂x through the residual branch",
}

#: Edges of the fixed log10|g| histogram bins: 0.5 decades wide from 1e-30 to 1e10. Values outside land in
#: the first or last bin; zeros and non-finite values are counted separately, never dropped.
HIST_EDGES: np.ndarray = np.linspace(-30.0, 10.0, 81)


# --- device-side reductions (one pass per sum) -------------------------------------------------------------

def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Flatten ``x`` to 1-D in a floating dtype wide enough to sum (half types are summed in float32)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.reshape(-1)


#: Tensors longer than this are reduced in chunks: one float32 BLAS dot over 10^8 elements drifts ~2e-4
#: relative on CPU; chunks of 2^20 keep it near 1e-6.
_CHUNK = 1 << 20

#: On CPU, gradients longer than this are reduced piece by piece: |g| of one piece (1 MB of float32, half per
#: core) stays in the cores' L2 caches while the three sums read it back, so a large weight gradient (read after
#: the whole backward pass, long out of cache) comes from memory once instead of once per sum. Activations and
#: output gradients are reduced right after they were computed, where pieces measured no faster
#: (benchmarks/monitor_overhead.py).
CPU_PIECE = 1 << 18


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a·b of two 1-D tensors, accurate for any length (chunked, partial sums added in float64)."""
    if a.numel() <= _CHUNK:
        return torch.dot(a, b)
    parts = [torch.dot(x, y) for x, y in zip(a.split(_CHUNK), b.split(_CHUNK))]
    return torch.stack(parts).sum(dtype=torch.float64).to(a.dtype)


def _workspace(scratch: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view of ``scratch`` shaped like flat ``like``, or None when it does not fit."""
    if scratch is None or scratch.numel() < like.numel() or scratch.dtype != like.dtype \
            or scratch.device != like.device:
        return None
    return scratch[: like.numel()]


def _by_pieces(flat: torch.Tensor, scratch: torch.Tensor | None,
               reduce_piece: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]) -> torch.Tensor:
    """Apply ``reduce_piece(piece, workspace, out_row)`` to every CPU_PIECE-long piece of ``flat`` (1-D, CPU).

    Returns the (pieces, 3) partial results; ``scratch`` (at least one piece long) is reused for every piece.
    """
    pieces = flat.split(CPU_PIECE)
    parts = torch.empty((len(pieces), 3), dtype=flat.dtype, device=flat.device)   # (pieces, 3)
    if scratch is None or scratch.numel() < CPU_PIECE or scratch.dtype != flat.dtype:
        scratch = torch.empty(CPU_PIECE, dtype=flat.dtype, device=flat.device)
    for i, piece in enumerate(pieces):
        reduce_piece(piece, scratch[: piece.numel()], parts[i])
    return parts


def _gradient_piece(piece: torch.Tensor, work: torch.Tensor, out: torch.Tensor) -> None:
    mag = torch.abs(piece, out=work)                      # (p,)
    torch.sum(mag, dim=0, out=out[0])
    torch.dot(mag, mag, out=out[1])
    torch.amax(mag, dim=0, out=out[2])


def activation_sums(x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce an activation to ``[Σx, Σx², #nonzero]`` on its device.

    Args:
        x: Any floating tensor, e.g. a layer output of shape (N, C, H, W).
        scratch: Optional 1-D buffer (same dtype and device, at least ``x.numel()`` long) for the one
            intermediate, so that no memory is allocated (fresh large allocations page-fault on CPU).

    Returns:
        A float tensor of shape (3,) on ``x``'s device. ``#nonzero`` is ``Σ sign(x)²`` (one pass; on CPU an
        order of magnitude faster than counting with a boolean mask). It is NaN when ``x`` holds NaN.
    """
    flat = _as_float(x)                                   # (n,)
    if flat.device.type != "cpu":
        nonzero = (flat != 0).sum().to(flat.dtype)        # boolean counts are fast on accelerators
        return torch.stack((flat.sum(), _dot(flat, flat), nonzero))
    sign = torch.sign(flat, out=_workspace(scratch, flat))  # (n,) in {-1, 0, 1}
    return torch.stack((flat.sum(), _dot(flat, flat), _dot(sign, sign)))


def gradient_sums(g: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a gradient to ``[Σ|g|, Σg², max|g|]`` on its device.

    ``Σ|g|`` is summed from ``|g|`` with the cascade sum (``vector_norm(ord=1)`` drifts ~1e-3 relative over
    10 M float32 elements on CPU; this stays near 1e-8).

    Args:
        g: Any floating tensor, e.g. ``p.grad`` of shape (C_out, C_in, k, k) or ∂L/∂Y of shape (N, C, H, W).
        scratch: Optional 1-D buffer for ``|g|`` (see :func:`activation_sums`).

    Returns:
        A float tensor of shape (3,) on ``g``'s device.
    """
    flat = _as_float(g)                                   # (n,)
    if flat.numel() == 0:
        return torch.zeros(3, dtype=flat.dtype, device=flat.device)
    if flat.device.type == "cpu" and flat.numel() > CPU_PIECE:
        parts = _by_pieces(flat, scratch, _gradient_piece)            # (pieces, 3)
        sums = parts[:, :2].sum(dim=0, dtype=torch.float64).to(flat.dtype)
        return torch.cat((sums, parts[:, 2].amax().reshape(1)))
    mag = torch.abs(flat, out=_workspace(scratch, flat))  # (n,)
    return torch.stack((mag.sum(), _dot(mag, mag), mag.amax()))


def squared_norm(x: torch.Tensor) -> torch.Tensor:
    """Σx² of a tensor on its device, as a 0-dim float tensor (a dot product: fast and accurate on CPU)."""
    flat = _as_float(x)                                   # (n,)
    return _dot(flat, flat)


#: Float tensors up to this many elements are reduced together, as segments of one concatenated vector: a
#: network's many small parameters (biases, norm scales) would otherwise cost several tensor operations each.
BATCH_NUMEL = 1 << 15


def segment_ids(sizes: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """For tensors of ``sizes`` concatenated flat, the index of the tensor each element came from.

    Returns:
        An int64 tensor of shape (sum(sizes),), e.g. ``[0, 0, 1, 2, 2, 2]`` for sizes ``[2, 1, 3]``.
    """
    return torch.repeat_interleave(torch.arange(len(sizes), device=device),
                                   torch.tensor(list(sizes), device=device))


def gradient_sums_batched(tensors: Sequence[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """:func:`gradient_sums` of several tensors on one device at once, accumulated in float64.

    Args:
        tensors: k floating tensors of any shapes, all on ``ids``' device.
        ids: :func:`segment_ids` of their sizes.

    Returns:
        A float64 tensor of shape (k, 3): ``[Σ|g|, Σg², max|g|]`` per tensor (NaN/Inf propagate as in
        :func:`gradient_sums`).
    """
    k = len(tensors)
    mag = torch.cat([t.reshape(-1) for t in tensors]).abs().double()      # (n,)
    out = torch.zeros((3, k), dtype=torch.float64, device=mag.device)    # (3, k)
    out[0].index_add_(0, ids, mag)
    out[1].index_add_(0, ids, mag * mag)
    out[2].scatter_reduce_(0, ids, mag, "amax")                           # |g| >= 0: the zero start is harmless
    return out.T                                                          # (k, 3)


def squared_norms_batched(tensors: Sequence[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """:func:`squared_norm` of several tensors on one device at once: a float64 tensor of shape (k,)."""
    flat = torch.cat([t.reshape(-1) for t in tensors]).double()          # (n,)
    return torch.zeros(len(tensors), dtype=torch.float64, device=flat.device).index_add_(0, ids, flat * flat)


def nonfinite_count(x: torch.Tensor, sums: torch.Tensor) -> torch.Tensor | int:
    """Number of NaN/Inf elements of ``x``, skipping the counting pass when ``sums`` shows none can exist.

    A finite sum of squares proves every element is finite, so on CPU (where reading one number costs no
    device synchronisation) the count pass runs only when ``sums`` is non-finite. On accelerators the count
    is always computed on the device, so nothing waits for the host.

    Args:
        x: The tensor that ``sums`` was reduced from.
        sums: Its reduction from :func:`activation_sums` or :func:`gradient_sums`.

    Returns:
        An ``int`` (CPU) or a 0-dim tensor on ``x``'s device.
    """
    if x.device.type == "cpu":
        if math.isfinite(sums[1].item()):                 # Σx² (or Σg²) is finite only if every element is
            return 0
        return int((~torch.isfinite(x)).sum())
    return (~torch.isfinite(x)).sum()


def zero_count_exact(x: torch.Tensor) -> int:
    """Exact count of zeros, for the rare tensors whose sign-based count is NaN because they hold NaN."""
    return int((x == 0).sum())


def log10_histogram(g: torch.Tensor, edges: np.ndarray = HIST_EDGES) -> torch.Tensor:
    """Counts of log10|g| in fixed bins, plus zeros and non-finite values, on ``g``'s device.

    Args:
        g: Any floating tensor.
        edges: Increasing, evenly spaced bin edges in log10 units.

    Returns:
        A float tensor of shape (len(edges) + 1,): ``len(edges) - 1`` bin counts, then the number of zeros,
        then the number of non-finite values. Values beyond the outer edges are counted in the outer bins.
    """
    flat = _as_float(g)                                   # (n,)
    mag = flat.abs()                                      # (n,)
    finite = torch.isfinite(mag)                          # (n,) bool
    zeros = (mag == 0).sum()
    nonfinite = (~finite).sum()
    positive = mag[finite & (mag > 0)]                    # (m,)
    lo, hi = float(edges[0]), float(edges[-1])
    logs = torch.log10(positive).clamp_(lo, hi)           # (m,)
    counts = torch.histc(logs, bins=len(edges) - 1, min=lo, max=hi)  # (bins,)
    return torch.cat((counts, torch.stack((zeros, nonfinite)).to(counts.dtype)))


# --- host-side formulas (pure functions of pooled sums) ----------------------------------------------------

def l2_norm(sumsq: float) -> float:
    """‖x‖₂ from Σx²."""
    return math.sqrt(sumsq) if sumsq >= 0 else math.nan


def mean(total: float, count: int) -> float:
    """Mean from a sum and an element count (NaN for no elements)."""
    return total / count if count > 0 else math.nan


def std(total: float, sumsq: float, count: int) -> float:
    """Population standard deviation from Σx, Σx² and the element count (NaN for no elements)."""
    if count <= 0:
        return math.nan
    mu = float(total) / count                        # Python floats: inf - inf is NaN without a numpy warning
    var = float(sumsq) / count - mu * mu
    return math.sqrt(max(var, 0.0)) if math.isfinite(var) else math.nan


def fraction(part: float, count: int) -> float:
    """``part / count``, NaN for no elements."""
    return part / count if count > 0 else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is zero or either side is missing."""
    if denominator == 0 or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator
