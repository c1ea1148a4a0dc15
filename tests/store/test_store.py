"""RunStore: round trips, filters, editing, concurrent readers, SIGKILLed writers, junk in the store root."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import diagnostics as dx
from diagnostics.store.layout import live_files

ROOT = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent("""
    import sys, time, torch
    from torch import nn
    import diagnostics as dx
    root, steps, delay, name = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with dx.GradientMonitor(model, store=dx.RunStore(root), run_name=name, flush_every=1) as mon:
        print(mon.run_id, flush=True)
        for step in range(steps):
            loss = model(torch.randn(3, 4)).pow(2).mean()
            loss.backward()
            mon.step(loss=loss)
            model.zero_grad()
            print(step, flush=True)
            time.sleep(delay)
""")


def start_writer(root: Path, steps: int, delay: float, name: str = "writer") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(steps), str(delay), name],
                            stdout=subprocess.PIPE, text=True, env=env)


def record(store: dx.RunStore, name: str = "run", steps: int = 3, **kwargs) -> str:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with dx.GradientMonitor(model, store=store, run_name=name, **kwargs) as mon:
        for _ in range(steps):
            loss = model(torch.randn(3, 4)).pow(2).mean()
            loss.backward()
            mon.step(loss=loss, accuracy=0.25)
            model.zero_grad()
    return mon.run_id


def test_round_trip_and_pushed_down_filters(store):
    run = record(store, steps=5)
    full = store.frame(run)
    assert len(full) == 5 * 3 and {"loss", "accuracy", "grad_norm_total"} <= set(full.columns)
    assert list(full["layer"][:3]) == ["0", "1", "2"]
    some = store.frame(run, layers=["2"], steps=(1, 3), columns=["act_grad_norm"])
    assert list(some["step"]) == [1, 2, 3] and set(some["layer"]) == {"2"}
    assert set(some.columns) == {"step", "layer", "act_grad_norm"}
    assert list(store.frame(run, steps=[0, 4])["step"].unique()) == [0, 4]
    with_loss = store.frame(run, columns=["weight_grad_norm", "loss"])
    assert with_loss["loss"].notna().all()
    steps = store.step_frame(run)
    assert list(steps["step"]) == [0, 1, 2, 3, 4] and (steps["accuracy"] == 0.25).all()
    assert set(store.param_frame(run, params=["0.weight"])["param"]) == {"0.weight"}


def test_runs_lists_metadata(store):
    assert store.runs().empty
    run = record(store, name="My first run!", steps=2)
    runs = store.runs()
    row = runs.set_index("run").loc[run]
    assert run.startswith("my-first-run-")
    assert (row["name"], row["status"], row["steps"], row["layers"], row["model"]) == \
        ("My first run!", "finished", 2, 3, "Sequential")
    assert row["size_bytes"] > 0 and row["parameters"] == 4 * 8 + 8 + 8 * 2 + 2
    assert isinstance(row["created"], pd.Timestamp)


def test_run_ids_are_unique_for_the_same_name(store):
    assert record(store, name="same", steps=1) != record(store, name="same", steps=1)


def test_rename_tag_note_and_delete(store):
    run = record(store)
    store.rename(run, "renamed")
    store.set_tags(run, ["baseline", " lr=0.1 ", ""])
    store.set_notes(run, "first try")
    meta = store.meta(run)
    assert (meta["name"], meta["tags"], meta["notes"]) == ("renamed", ["baseline", "lr=0.1"], "first try")
    assert len(store.frame(run)) == 9                       # data untouched
    with pytest.raises(dx.StoreError, match="empty"):
        store.rename(run, "  ")
    store.delete(run)
    assert store.runs().empty
    with pytest.raises(dx.StoreError, match="no run"):
        store.frame(run)


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".", "..", "x" * 200], ids=["parent", "slash", "empty",
                                                                                "dot", "dotdot", "long"])
def test_invalid_run_ids_are_refused(store, bad):
    with pytest.raises(dx.StoreError, match="not a valid run id"):
        store.frame(bad)


def test_many_steps_end_as_a_handful_of_files(store):
    run = record(store, steps=400, flush_every=1)
    for table in ("layers", "steps", "params"):
        assert len(live_files(store.root / run / table)) == 1
        assert len(list((store.root / run / table).iterdir())) == 1
    frame = store.frame(run)
    assert len(frame) == 400 * 3 and not frame.duplicated(["step", "layer"]).any()


def test_compaction_while_training_runs_off_the_training_thread(store, monkeypatch):
    threads = []
    real = dx.store.RunWriter._maybe_compact

    def spy(self, table):
        threads.append(threading.current_thread() is threading.main_thread())
        real(self, table)

    monkeypatch.setattr(dx.store.RunWriter, "_maybe_compact", spy)
    run = record(store, steps=100, flush_every=1)
    assert threads and not any(threads)              # every merge during the run happened in the background
    frame = store.frame(run)
    assert sorted(frame["step"].unique()) == list(range(100)) and len(frame) == 300
    for table in ("layers", "steps", "params"):
        assert len(live_files(store.root / run / table)) == 1


def test_a_reader_never_sees_a_row_twice_while_compaction_is_half_done(store):
    run = record(store, steps=4, flush_every=1)
    table_dir = store.root / run / "steps"
    # Simulate a compaction caught between writing the merged file and deleting its inputs.
    data = pd.read_parquet(next(table_dir.iterdir()))
    for i, (_, row) in enumerate(data.iterrows(), start=1):
        row.to_frame().T.astype(data.dtypes).to_parquet(table_dir / f"chunk-{i:08d}.parquet")
    assert len(list(table_dir.iterdir())) == 5
    assert list(store.step_frame(run)["step"]) == [0, 1, 2, 3]


def test_delete_refuses_a_run_that_is_still_being_written(store):
    model = nn.Linear(2, 1)
    with dx.GradientMonitor(model, store=store) as mon:
        model(torch.randn(1, 2)).sum().backward()
        mon.step()
        assert store.meta(mon.run_id)["status"] == "running"
        with pytest.raises(dx.StoreError, match="still being written"):
            store.delete(mon.run_id)
        store.rename(mon.run_id, "renamed while running")
    assert store.meta(mon.run_id)["name"] == "renamed while running"
    assert store.meta(mon.run_id)["status"] == "finished"


def test_a_deleted_run_does_not_break_the_training_that_writes_it(store):
    model = nn.Linear(2, 1)
    with pytest.warns(RuntimeWarning, match="recording to disk stopped"):
        with dx.GradientMonitor(model, store=store, flush_every=1) as mon:
            for step in range(3):
                model(torch.randn(1, 2)).sum().backward()
                mon.step()
                if step == 0:
                    store.delete(mon.run_id, force=True)
    assert store.runs().empty


def test_reader_in_this_process_while_another_process_writes(store):
    writer = start_writer(store.root, steps=40, delay=0.02)
    try:
        run = writer.stdout.readline().strip()
        seen = []
        deadline = time.monotonic() + 120
        while writer.poll() is None and time.monotonic() < deadline:
            if (store.root / run / "meta.json").exists():
                frame = store.frame(run)
                assert not frame.duplicated(["step", "layer"]).any()
                steps = sorted(frame["step"].unique())
                assert steps == list(range(len(steps)))           # a prefix, never a hole
                seen.append(len(steps))
            time.sleep(0.01)
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
    assert seen == sorted(seen) and len(set(seen)) > 2               # it grew while we watched
    assert len(store.frame(run)) == 40 * 3 and store.meta(run)["status"] == "finished"


def test_sigkill_keeps_every_flushed_step(store):
    writer = start_writer(store.root, steps=10_000, delay=0.005, name="killed")
    run = writer.stdout.readline().strip()
    last = -1
    while last < 30:
        last = int(writer.stdout.readline())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    frame = store.frame(run)
    steps = sorted(frame["step"].unique())
    assert steps == list(range(len(steps))) and len(steps) >= last + 1       # flush_every=1: nothing lost
    assert len(frame) == 3 * len(steps)
    assert store.meta(run)["status"] == "crashed"
    assert store.runs().set_index("run").loc[run, "status"] == "crashed"
    store.compact(run)
    assert len(store.frame(run)) == len(frame)


def test_corrupt_and_foreign_entries_in_the_store_root_are_skipped_with_a_warning(store):
    run = record(store)
    (store.root / "notes.txt").write_text("hello")
    (store.root / "empty-dir").mkdir()
    (store.root / "bad-json").mkdir()
    (store.root / "bad-json" / "meta.json").write_text("{not json")
    (store.root / "liar").mkdir()
    (store.root / "liar" / "meta.json").write_text(json.dumps({"run": "someone-else"}))
    (store.root / "future").mkdir()
    (store.root / "future" / "meta.json").write_text(json.dumps({"run": "future", "schema_version": 99}))
    with pytest.warns(RuntimeWarning) as caught:
        runs = store.runs()
    assert list(runs["run"]) == [run]
    messages = " ".join(str(w.message) for w in caught)
    for name in ("notes.txt", "empty-dir", "bad-json", "liar", "future"):
        assert name in messages
    assert "newer version" in messages


def test_a_corrupt_chunk_gives_a_store_error_not_a_crash(store):
    run = record(store)
    chunk = next((store.root / run / "layers").iterdir())
    chunk.write_bytes(b"garbage")
    with pytest.raises(dx.StoreError, match="could not be read"):
        store.frame(run)
    assert list(store.runs()["run"]) == [run]                 # the run is still listed


def test_a_missing_store_root_is_an_empty_store(tmp_path):
    store = dx.RunStore(tmp_path / "nowhere")
    assert store.runs().empty and store.run_ids() == []


def test_versions_change_when_a_run_is_written_or_annotated_and_only_then(store):
    writer = store.create_run("live")
    run = writer.run_id
    before, run_before = store.version(), store.run_version(run)
    assert store.version() == before and store.run_version(run) == run_before          # nothing changed
    time.sleep(0.01)                                                                     # a new mtime
    writer.append("steps", {"step": [0], "loss": [1.0]})
    writer.end_step()
    writer.flush()
    assert store.run_version(run) != run_before and store.version() != before
    written = store.run_version(run)
    time.sleep(0.01)
    store.rename(run, "renamed")
    assert store.run_version(run) != written
    writer.close()
    assert store.run_version("no-such-run") == store.run_version("also-missing")       # unreadable: a constant


def test_kernel_snapshots_have_one_file_name_and_are_found_by_the_store(store):
    writer = store.create_run("kernels")
    assert not store.has_kernels(writer.run_id) or store.kernel_steps(writer.run_id) == []
    writer.write_kernels(7, {"conv|grad": torch.ones(2, 1, 3, 3).numpy()})
    writer.close()
    assert store.has_kernels(writer.run_id) and store.kernel_steps(writer.run_id) == [7]
    assert store.kernel_snapshot(writer.run_id, 7).arrays["conv"]["grad"].shape == (2, 1, 3, 3)
    from diagnostics.store.layout import snapshot_name, snapshot_step
    assert snapshot_step(snapshot_name(7)) == 7 and snapshot_step("notes.txt") is None


def test_chunks_dictionary_encode_all_but_the_measured_values(tmp_path):
    from diagnostics.store.layout import dictionary_columns, write_table_atomic

    table = pa.table({"run": ["a", "a"], "step": [1, 2], "grad_norm": [0.5, float("nan")], "flag": [True, None],
                      "counts": [[1, 2], [3]]})
    assert dictionary_columns(table) == ["run", "step", "flag", "counts"]
    write_table_atomic(tmp_path / "t.parquet", table)
    back = pq.read_table(tmp_path / "t.parquet")
    assert back.to_pylist()[0] == {"run": "a", "step": 1, "grad_norm": 0.5, "flag": True, "counts": [1, 2]}
    assert back.column("step").to_pylist() == [1, 2] and math.isnan(back.column("grad_norm")[1].as_py())
