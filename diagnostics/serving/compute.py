"""One queue of heavy work for a whole dashboard process: an estimate before it starts, a limit, turns, cancel.

Every session's comparisons (and anything else submitted) wait in one first-in, first-out queue and run
``slots`` at a time, so two tabs or two visitors never train side by side on a shared machine. Work is
estimated in GMAC (10⁹ multiply-adds, forward and backward) before it is queued; over the per-server
limit it is refused with both numbers. A waiting job can be cancelled at once; a running one is asked to stop
(its ``cancel`` callable) and stops at its next step.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import ComputeLimitError

#: Default per-server limit of one job, in GMAC: the default comparison needs about 700 (41 s measured on two
#: shared cores), the default depth sweep 2,600 (265 s); the issue's depth 100 × width 256 × 20,000 steps 62 million.
DEFAULT_LIMIT_GMAC = 10_000.0
#: Default limit of one gradient check, in GMAC (the largest the page allows asked for about 130: 26-54 s).
DEFAULT_CHECK_LIMIT_GMAC = 20.0

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


def gmac(work: float) -> str:
    """A number of GMAC for messages: ``61,703,248``, ``133``, ``0.0034``."""
    return f"{work:,.0f}" if work >= 10 else f"{work:.2g}"


class Ticket:
    """One submitted job: its place in the queue, its state, and what it returned or raised."""

    def __init__(self, number: int, owner: str, label: str, work: float, run: Callable[[], Any],
                 cancel: Callable[[], None] | None) -> None:
        self.number, self.owner, self.label, self.work = number, owner, label, work
        self._run, self._cancel = run, cancel
        self.state = QUEUED
        self.result: Any = None
        self.exception: BaseException | None = None
        self.submitted = time.monotonic()
        self.cancel_requested = False
        self._done = threading.Event()

    @property
    def finished(self) -> bool:
        """Done, failed or cancelled."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (or ``timeout`` seconds); returns :attr:`finished`."""
        return self._done.wait(timeout)


class ComputeQueue:
    """First-in, first-out turns for heavy jobs, shared by every session of a process.

    Example::

        queue = ComputeQueue(limit_gmac=20_000)
        ticket = queue.submit("session-a", "compare", 1_400.0, job.run, cancel=job.cancel)
        queue.position(ticket)        # 0 while running, 1 = next, ...
        queue.cancel(ticket)

    Args:
        limit_gmac: The most one job may ask for.
        slots: Jobs that run at the same time.
    """

    def __init__(self, limit_gmac: float = DEFAULT_LIMIT_GMAC, slots: int = 1) -> None:
        if slots < 1:
            raise ComputeLimitError(f"slots must be at least 1, got {slots}")
        self.limit_gmac, self.slots = float(limit_gmac), int(slots)
        self._lock = threading.Lock()
        self._waiting: list[Ticket] = []
        self._running: list[Ticket] = []
        self._numbers = itertools.count(1)

    def check(self, work: float, what: str = "This job", limit: float | None = None) -> None:
        """Refuse work over ``limit`` (default the queue's), saying both numbers."""
        limit = self.limit_gmac if limit is None else limit
        if work > limit:
            raise ComputeLimitError(f"{what} needs about {gmac(work)} GMAC (10⁹ multiply-adds), over this "
                                    f"dashboard's limit of {gmac(limit)} GMAC: make it smaller (fewer steps or "
                                    "runs, a smaller depth, width, batch or kernel)")

    def submit(self, owner: str, label: str, work: float, run: Callable[[], Any],
               cancel: Callable[[], None] | None = None, limit: float | None = None) -> Ticket:
        """Queue ``run()`` after the jobs already waiting; it starts in a thread of its own when its turn comes.

        Args:
            owner: Who asked (a session id); only for display.
            label: What it is, for the queue's listing.
            work: The estimate, in GMAC; over the limit it is refused.
            run: The job; what it returns is kept on the ticket, what it raises too.
            cancel: Asks a running job to stop (it should raise soon after).
            limit: The limit for this kind of job (default the queue's).

        Raises:
            ComputeLimitError: ``work`` is over the limit.
        """
        self.check(work, label, limit)
        ticket = Ticket(next(self._numbers), owner, label, float(work), run, cancel)
        with self._lock:
            self._waiting.append(ticket)
        self._dispatch()
        return ticket

    def position(self, ticket: Ticket) -> int | None:
        """0 while it runs, 1 for the next to run, ...; ``None`` once finished."""
        with self._lock:
            if ticket in self._running:
                return 0
            if ticket in self._waiting:
                return self._waiting.index(ticket) + 1
        return None

    def listing(self) -> list[tuple[int, str, str, float]]:
        """``(position, owner, label, work)`` of every running and waiting job, in turn order."""
        with self._lock:
            return [(0, t.owner, t.label, t.work) for t in self._running] + \
                [(i + 1, t.owner, t.label, t.work) for i, t in enumerate(self._waiting)]

    def cancel(self, ticket: Ticket) -> None:
        """Drop a waiting job at once; ask a running one to stop."""
        ticket.cancel_requested = True
        with self._lock:
            waiting = ticket in self._waiting
            if waiting:
                self._waiting.remove(ticket)
        if waiting:
            ticket.state = CANCELLED
            ticket.exception = ComputeLimitError(f"{ticket.label} was cancelled before it started")
            ticket._done.set()
        elif ticket._cancel is not None and not ticket.finished:
            ticket._cancel()

    def _dispatch(self) -> None:
        with self._lock:
            starting = []
            while self._waiting and len(self._running) < self.slots:
                ticket = self._waiting.pop(0)
                ticket.state = RUNNING
                self._running.append(ticket)
                starting.append(ticket)
        for ticket in starting:
            threading.Thread(target=self._work, args=(ticket,), name=f"compute-{ticket.number}", daemon=True).start()

    def _work(self, ticket: Ticket) -> None:
        try:
            ticket.result = ticket._run()
            ticket.state = DONE
        except BaseException as exc:  # noqa: BLE001 - kept on the ticket for the page, with its traceback
            ticket.exception = exc
            ticket.state = CANCELLED if ticket.cancel_requested else FAILED
        finally:
            with self._lock:
                self._running.remove(ticket)
            ticket._done.set()
            self._dispatch()


#: The reference (loop) implementation of a manual rule costs about this many times the fast one per multiply-add
#: (measured 11-13x for conv2d checks of 0.06-1.3 GMAC on one thread).
REFERENCE_FACTOR = 12.0


def layer_check_work(module: Any, input_shape: tuple[int, ...], impl: str = "fast", tensors: int = 3,
                     coords: int = 64) -> float:
    """The multiply-adds a gradient check of ``module`` on an input of ``input_shape`` needs, in GMAC (for
    ``impl="reference"``, :data:`REFERENCE_FACTOR` times that: the work the fast rule would do in the same time).

    One forward pass is counted on the meta device (no memory, no arithmetic): each output element of a
    convolution costs ``weight[0].numel()`` multiply-adds (``in_channels/groups · kernel``), each input element
    of a transposed one the same, a pooling window its size, anything else one per element. The check then runs
    ``2 · coords`` forward passes per differentiated tensor (central finite differences) and about eight more
    (autograd, the manual rule, kink masks).
    """
    import copy

    import torch

    meta = copy.deepcopy(module).to("meta")
    with torch.no_grad():
        out = meta(torch.empty(input_shape, device="meta"))
    out = out[0] if isinstance(out, tuple) else out
    inputs, outputs = float(torch.Size(input_shape).numel()), float(out.numel())
    weight = getattr(meta, "weight", None)
    per = float(weight[0].numel()) if weight is not None and weight.dim() > 1 else 1.0
    kernel = getattr(meta, "kernel_size", None)
    if weight is None and kernel is not None:
        per = float(torch.tensor(kernel).prod()) if not isinstance(kernel, int) else float(kernel) ** (out.dim() - 2)
    transposed = bool(getattr(meta, "transposed", False))
    forward = (inputs if transposed else max(outputs, inputs if per == 1.0 else 0.0)) * per
    return forward * (2 * coords * tensors + 8) / 1e9 * (REFERENCE_FACTOR if impl == "reference" else 1.0)
