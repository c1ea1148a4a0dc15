"""The dashboard's background comparison: :func:`~.launch.compare` in a worker thread, polled for progress."""

from __future__ import annotations

import threading
from typing import Any

from ..errors import DiagnosticsError
from ..store import RunStore
from .launch import execute, prepare
from .training import Job, Progress


def comparison_work(job: Job) -> float:
    """The multiply-adds a prepared comparison needs, in GMAC (10⁹), counted before it starts.

    Per run: a forward pass costs ``(in_channels·width + (depth−1)·width²) · kernel^dims · input_size^dims``
    multiply-adds per sample (every conv keeps the spatial size; the head is negligible); a training step is
    three of those (forward, and backward for inputs and weights) for each of ``batch_size`` samples, and
    every evaluation one per held-out sample.
    """
    train = job.train
    evaluations = train.steps // max(1, train.eval_every) + 1
    total = 0.0
    for c in job.configs.values():
        per_sample = (c.in_channels * c.width + (c.depth - 1) * c.width ** 2) * c.kernel_size ** c.dims \
            * c.input_size ** c.dims
        total += per_sample * (3.0 * train.steps * train.batch_size + evaluations * len(job.data.y_test))
    return total / 1e9

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
        #: The work it needs, in GMAC (see :func:`comparison_work`), known before it starts.
        self.work = comparison_work(self._job)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self.run, name=f"compare-{self.group}", daemon=True)
        self.result: dict[str, str] | None = None
        self.error: str | None = None
        #: What ended the worker: a :class:`~diagnostics.DiagnosticsError` is a message for the user, anything
        #: else a bug to show with its traceback.
        self.exception: BaseException | None = None

    def start(self) -> ComparisonJob:
        """Start training in the background; returns ``self``."""
        self._thread.start()
        return self

    def run(self) -> None:
        """Train in the calling thread (what :meth:`start` runs in its worker, or a queue runs in its turn)."""
        try:
            self.result = execute(self._job, self._kwargs.get("nproc", 1), self._kwargs.get("workers", "auto"),
                                  self._record, stop=self._stop)
        except DiagnosticsError as exc:
            self.error, self.exception = str(exc), exc
            if self.cancelled:
                self._tag_cancelled()
        except Exception as exc:  # noqa: BLE001 - kept for the page (with its traceback) instead of dying in a thread
            self.error, self.exception = f"{type(exc).__name__}: {exc}", exc
        finally:
            self._done.set()

    def _tag_cancelled(self) -> None:
        """Tag the runs the cancelled comparison started ``cancelled`` (their status says they stopped early)."""
        store = RunStore(self._job.store_root)
        for run in store.run_ids():
            meta = store.meta(run)
            if meta.get("group") == self.group and meta.get("kind") == "comparison":
                store.set_tags(run, [*meta.get("tags", []), "cancelled"])

    def cancel(self) -> None:
        """Ask the training to stop at its next step; the runs keep what was recorded, tagged by their status."""
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._stop.is_set()

    def _record(self, update: Progress) -> None:
        with self._lock:
            self._latest[update.variant] = update

    @property
    def finished(self) -> bool:
        """Whether the worker has ended (with a result or an error)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (or ``timeout`` seconds); returns :attr:`finished`."""
        return self._done.wait(timeout)

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
