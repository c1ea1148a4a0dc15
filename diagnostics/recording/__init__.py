"""Recording: the GradientMonitor that attaches to any ``nn.Module`` and turns each training step into rows.

Owns the hooks (one owner of every handle), the per-step reductions (:mod:`.stats`, pure PyTorch, and the fused
CPU kernels of :mod:`.native`), the cross-process combination and the rows written to the run store. It may import
``diagnostics.errors`` and ``diagnostics.store``; nothing in it imports presentation code or Streamlit.
"""

from __future__ import annotations

from . import stats
from .monitor import GradientMonitor

__all__ = ["GradientMonitor", "stats"]
