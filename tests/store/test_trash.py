"""Deleting is recoverable: a deleted run waits in the store's trash until it is emptied."""

from __future__ import annotations

import pytest
import torch

import diagnostics as dx


def record(store: dx.RunStore, name: str) -> str:
    model = torch.nn.Linear(2, 1)
    with dx.GradientMonitor(model, store=store, run_name=name) as mon:
        for _ in range(3):
            model(torch.randn(3, 2)).sum().backward()
            mon.step(loss=1.0)
    return mon.run_id


def test_a_deleted_run_leaves_the_store_and_restores_with_all_its_data(tmp_path):
    store = dx.RunStore(tmp_path / "runs")
    kept, run = record(store, "kept"), record(store, "gone")
    store.rename(run, "renamed")
    before = store.frame(run)
    store.delete(run)
    assert list(store.runs()["run"]) == [kept]
    with pytest.raises(dx.StoreError, match="no run"):
        store.frame(run)
    trashed = store.trashed()
    assert list(trashed["run"]) == [run] and list(trashed["name"]) == ["renamed"]
    store.restore(run)
    assert sorted(store.runs()["run"]) == sorted([kept, run]) and store.trashed().empty
    assert store.meta(run)["name"] == "renamed"
    assert store.frame(run).equals(before)


def test_emptying_the_trash_deletes_for_good(tmp_path):
    store = dx.RunStore(tmp_path / "runs")
    runs = [record(store, f"r{i}") for i in range(2)]
    for run in runs:
        store.delete(run)
    assert store.empty_trash() == 2
    assert store.trashed().empty and store.runs().empty
    assert [p.name for p in store.root.iterdir()] == []
    with pytest.raises(dx.StoreError, match="not in the trash"):
        store.restore(runs[0])


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".."], ids=["parent", "slash", "empty", "dotdot"])
def test_restore_refuses_names_that_are_not_run_ids(tmp_path, bad):
    store = dx.RunStore(tmp_path / "runs")
    with pytest.raises(dx.StoreError, match="not"):
        store.restore(bad)
