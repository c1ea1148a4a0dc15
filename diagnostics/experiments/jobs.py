"""The dashboard's background comparison: :func:`~.launch.compare` in a worker thread, polled for progress."""

from __future__ import annotations

import threading
from typing import Any

from ..errors import DiagnosticsError
from .launch import execute, prepare
from .training import Progress

class ComparisonJob:
    """Runs :func:`compare` in a worker thread and keeps its progress, so a page can poll it.

    Example::

        job = ComparisonJob(store="runs", variants=["plain", "residual"], depth=20, steps=300)
        job.start()
        while not job.finished:
            print(job.fractions())

    Args:
        **kwargs: The arguments of :func:`compare` (``store``, ``variants``, ``depth``, ..., ``nproc``,
            ``workers``) except ``progress``. Settings are validated and the data loaded here, so a bad setting
            raises before any thread starts.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = dict(kwargs)
        self._job = prepare(**{k: v for k, v in kwargs.items() if k not in ("nproc", "workers", "progress")})
        self.group = self._job.group
        self.variants = list(self._job.configs)
        self.steps = self._job.train.steps
        self._lock = threading.Lock()
        self._latest: dict[str, Progress] = {}
        self._thread = threading.Thread(target=self._target, name=f"compare-{self.group}", daemon=True)
        self.result: dict[str, str] | None = None
        self.error: str | None = None
        #: What ended the worker: a :class:`~diagnostics.DiagnosticsError` is a message for the user, anything
        #: else a bug to show with its traceback.
        self.exception: BaseException | None = None

    def start(self) -> ComparisonJob:
        """Start training in the background; returns ``self``."""
        self._thread.start()
        return self

    def _target(self) -> None:
        try:
            self.result = execute(self._job, self._kwargs.get("nproc", 1), self._kwargs.get("workers", "auto"),
                                  self._record)
        except DiagnosticsError as exc:
            self.error, self.exception = str(exc), exc
        except Exception as exc:  # noqa: BLE001 - kept for the page (with its traceback) instead of dying in a thread
            self.error, self.exception = f"{type(exc).__name__}: {exc}", exc

    def _record(self, update: Progress) -> None:
        with self._lock:
            self._latest[update.variant] = update

    @property
    def finished(self) -> bool:
        """Whether the worker has ended (with a result or an error)."""
        return self._thread.ident is not None and not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (or ``timeout`` seconds); returns :attr:`finished`."""
        self._thread.join(timeout)
        return self.finished

    def latest(self) -> dict[str, Progress]:
        """The last progress report of each variant that has started."""
        with self._lock:
            return dict(self._latest)

    def fractions(self) -> dict[str, float]:
        """Share of steps done per variant (1.0 once a variant finished, also early by divergence)."""
        latest = self.latest()
        out = {}
        for variant in self.variants:
            p = latest.get(variant)
            out[variant] = 0.0 if p is None else (1.0 if p.done or p.diverged else p.step / max(1, p.steps))
        return out
