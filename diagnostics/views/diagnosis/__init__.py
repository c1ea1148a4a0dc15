"""Findings: plain-language sentences about what a run's gradients did, each with its evidence and a fix.

Owns the finding rules, one file per concern: ``nonfinite`` (where NaN/Inf came from), ``divergence`` (the total
gradient norm against the run's own history), ``depth`` (vanishing and exploding across depth, on output
gradients), ``dead`` (units that never fire) and ``updates`` (update sizes, frozen and lost updates); ``rules``
holds the table of rules and :func:`findings`, ``evidence`` what the rules read, ``finding`` the result type and
``thresholds`` where findings start. It reads runs through :mod:`diagnostics.store` and the views' matrices, and
never imports streamlit; the Gradient flow page, the HTML report and ``python -m diagnostics findings`` use it.
"""

from .evidence import Evidence
from .finding import KINDS, SEVERITIES, Finding
from .rules import RULES, diagnose, evidence_of, findings
from .thresholds import Thresholds

__all__ = ["KINDS", "RULES", "SEVERITIES", "Evidence", "Finding", "Thresholds", "diagnose", "evidence_of",
           "findings"]
