"""What a finding is: a kind, a severity, the layers and steps concerned, what happened and what to do."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

#: Severities, most severe first: ``problem`` (training is broken), ``warning`` (likely hurts), ``info`` (a note).
SEVERITIES: tuple[str, ...] = ("problem", "warning", "info")

#: The kinds of finding, with what each one means.
KINDS: dict[str, str] = {
    "nonfinite": "NaN/Inf appeared: the origin (input batch, loss or layer) first, its consequences after",
    "exploding": "gradients grow without bound: across depth, or the total norm diverging or spiking",
    "vanishing": "the first layers receive a tiny fraction of the gradient the last layers receive",
    "dead_units": "units whose output is exactly zero on every input, so they get no gradient",
    "not_updated": "layers whose weights do not change: frozen, not in the optimizer, or an update lost",
    "update_small": "updates far below the usual 1e-3 of the weights while the loss is not falling",
    "update_large": "updates a large fraction of the weights at every step",
    "no_verdict": "too few recorded steps to judge a rule yet",
}


@dataclass(frozen=True)
class Finding:
    """One finding about one run.

    Attributes:
        kind: One of :data:`KINDS`.
        severity: One of :data:`SEVERITIES`.
        message: What happened, in plain words, with the numbers behind it.
        fix: What to do about it, and why it helps.
        run: The run's id.
        layers: The layers concerned, in forward order (empty: the whole network).
        steps: The first and last recorded step concerned, or None.
        detail: A finer kind, e.g. ``depth``, ``divergence`` or ``spike`` for ``exploding``; ``frozen``,
            ``not_in_optimizer`` or ``lost_update`` for ``not_updated``.
        evidence: The numbers behind the message (JSON-serialisable).
    """

    kind: str
    severity: str
    message: str
    fix: str
    run: str = ""
    layers: tuple[str, ...] = ()
    steps: tuple[int, int] | None = None
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {tuple(KINDS)}, got {self.kind!r}")

    @property
    def text(self) -> str:
        """The message and the fix as one paragraph."""
        return f"{self.message} Fix: {self.fix}"

    def as_dict(self) -> dict[str, Any]:
        """Plain types only (lists for tuples), ready for JSON."""
        out = asdict(self)
        out["layers"] = list(self.layers)
        out["steps"] = list(self.steps) if self.steps is not None else None
        return out


def by_severity(findings: list[Finding]) -> list[Finding]:
    """Most severe first; the order of the rules within one severity."""
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def fmt(x: float) -> str:
    """A number in two significant digits (``inf``, ``nan`` as words)."""
    return f"{x:.2g}" if math.isfinite(x) else str(x)


def names(layers: list[str] | tuple[str, ...], limit: int = 5) -> str:
    """``'a', 'b' and 3 more``."""
    shown = ", ".join(f"'{n}'" for n in layers[:limit])
    return shown + (f" and {len(layers) - limit} more" if len(layers) > limit else "")
