"""The compute budget: estimates before work starts, the per-server limit, one FIFO queue for every session,
positions, and cancel (waiting and running)."""

from __future__ import annotations

import threading

import pytest
import torch.nn as nn

from diagnostics.errors import ComputeLimitError
from diagnostics.experiments.jobs import ComparisonJob
from diagnostics.serving.compute import CANCELLED, DONE, ComputeQueue, layer_check_work


def blocker():
    """A job that runs until released, and its release."""
    release = threading.Event()
    return (lambda: release.wait(10) and "done"), release


def test_work_over_the_limit_is_refused_before_it_is_queued():
    queue = ComputeQueue(limit_gmac=100)
    with pytest.raises(ComputeLimitError, match="needs about 150 GMAC .* over this dashboard's limit of 100 GMAC"):
        queue.submit("a", "comparison", 150.0, lambda: None)
    assert queue.listing() == []


def test_two_sessions_share_one_queue_first_in_first_out():
    queue = ComputeQueue(limit_gmac=100)
    run_a, release_a = blocker()
    run_b, release_b = blocker()
    a = queue.submit("session-a", "comparison A", 10.0, run_a)
    b = queue.submit("session-b", "comparison B", 10.0, run_b)
    assert (queue.position(a), queue.position(b)) == (0, 1)          # A runs, B waits its turn
    assert [row[:3] for row in queue.listing()] == [(0, "session-a", "comparison A"), (1, "session-b", "comparison B")]
    release_a.set()
    assert a.wait(5) and a.state == DONE and a.result == "done"
    release_b.set()
    assert b.wait(5) and b.state == DONE and queue.position(b) is None


def test_a_waiting_job_is_cancelled_at_once_and_a_running_one_is_asked_to_stop():
    queue = ComputeQueue(limit_gmac=100)
    stop = threading.Event()

    def running():
        if stop.wait(10):
            raise ComputeLimitError("the comparison was cancelled")

    a = queue.submit("a", "running", 1.0, running, cancel=stop.set)
    b = queue.submit("b", "waiting", 1.0, lambda: pytest.fail("a cancelled job ran"))
    queue.cancel(b)
    assert b.finished and b.state == CANCELLED and queue.position(b) is None
    queue.cancel(a)
    assert a.wait(5) and a.state == CANCELLED and isinstance(a.exception, ComputeLimitError)


def test_a_comparison_estimate_is_known_before_it_starts_and_grows_with_its_settings(tmp_path):
    small = ComparisonJob(store=str(tmp_path), variants=["plain"], depth=3, width=4, steps=10, dataset="synthetic")
    bigger = ComparisonJob(store=str(tmp_path), variants=["plain", "residual"], depth=3, width=4, steps=20,
                           dataset="synthetic")
    assert 0 < small.work and bigger.work == pytest.approx(4 * small.work, rel=0.1)
    issue = ComparisonJob(store=str(tmp_path), depth=100, width=256, steps=20_000, dataset="synthetic")
    with pytest.raises(ComputeLimitError, match="over this dashboard's limit"):
        ComputeQueue().check(issue.work, "The comparison")


@pytest.mark.parametrize("processes", [{"workers": 1}, {"nproc": 2}], ids=["in-process", "ddp-ranks"])
def test_a_running_comparison_stops_when_cancelled(tmp_path, processes):
    """In this process it stops at its next step; DDP ranks (which cannot leave mid-collective) are terminated."""
    job = ComparisonJob(store=str(tmp_path), variants=["plain"], depth=2, width=2, steps=200_000, dataset="synthetic",
                        batch_size=8, **processes)
    started = threading.Event()
    job._record = lambda update, record=job._record: (started.set(), record(update))
    job.start()
    assert started.wait(120)
    job.cancel()
    assert job.wait(60) and job.cancelled and isinstance(job.exception, ComputeLimitError)
    assert job.latest()["plain"].step < 200_000


@pytest.mark.parametrize("module,shape,expected", [
    (nn.Conv2d(16, 32, 9, padding=4), (8, 16, 32, 32), 8 * 32 * 32 * 32 * 16 * 81 * 392 / 1e9),
    (nn.MaxPool2d(3), (2, 3, 7, 6), 2 * 3 * 2 * 2 * 9 * 392 / 1e9),
    (nn.ReLU(), (2, 3, 4, 4), 2 * 3 * 16 * 392 / 1e9),
], ids=["largest-conv", "max-pool", "relu"])
def test_a_gradient_check_estimate_counts_one_forward_pass_times_the_passes_it_runs(module, shape, expected):
    assert layer_check_work(module, shape) == pytest.approx(expected)
    assert layer_check_work(module, shape, "reference") == pytest.approx(12 * expected)   # its loops


def test_a_comparison_training_in_worker_processes_stops_when_cancelled(tmp_path):
    import time

    import diagnostics as dx

    job = ComparisonJob(store=str(tmp_path), variants=["plain", "residual"], depth=2, width=2, steps=200_000,
                        dataset="synthetic", batch_size=8, workers=2).start()
    deadline = time.monotonic() + 120
    while not job.latest() and time.monotonic() < deadline:        # both spawned workers are training
        time.sleep(0.1)
    job.cancel()
    assert job.wait(60) and isinstance(job.exception, ComputeLimitError)
    runs = dx.RunStore(tmp_path).runs()
    assert len(runs) == 2 and (runs["steps"] < 200_000).all()
    assert all("cancelled" in tags for tags in runs["tags"]) and not runs["status"].eq("running").any()
