"""One bad run folder never breaks the store: each damaged meta.json is skipped with its reason, the rest read."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import diagnostics as dx


def record(store: dx.RunStore, name: str) -> str:
    model = torch.nn.Linear(2, 1)
    with dx.GradientMonitor(model, store=store, run_name=name) as mon:
        model(torch.randn(3, 2)).sum().backward()
        mon.step(loss=1.0)
    return mon.run_id


def nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


#: (field, bad value written into a good run's meta.json, what the reason must mention).
DAMAGE = [
    ("steps", "many", "'steps' must be a non-negative integer"),
    ("steps", -3, "'steps' must be a non-negative integer"),
    ("created", "yesterday", "'created' must be a finite number"),
    ("name", ["a", "list"], "'name' must be a string"),
    ("name", "x" * 5000, "'name' must be a string of at most"),
    ("tags", "not-a-list", "'tags' must be a list"),
    ("tags", [1, 2], "'tags' must be a list"),
    ("layers", True, "'layers' must be a non-negative integer"),
    ("parameters", "lots", "'parameters' must be a finite number"),
    ("hist_edges", ["a"], "'hist_edges' must be a list of finite numbers"),
    ("config", nested(100), "nests deeper than"),
    ("model", {"x": 1}, "'model' must be a string"),
]


@pytest.mark.parametrize("field, value, reason", DAMAGE, ids=lambda v: str(v)[:20] if isinstance(v, str) else None)
def test_a_damaged_meta_json_skips_that_run_with_its_reason(tmp_path, field, value, reason):
    store = dx.RunStore(tmp_path / "runs")
    good, bad = record(store, "good"), record(store, "bad")
    path = store.root / bad / "meta.json"
    meta = json.loads(path.read_text())
    meta[field] = value
    path.write_text(json.dumps(meta))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = store.runs()
    assert list(runs["run"]) == [good]
    assert len(caught) == 1 and bad in str(caught[0].message) and reason in str(caught[0].message)
    with pytest.raises(dx.StoreError, match=reason.split(" must")[0].replace("'", ".")):
        store.meta(bad)


@pytest.mark.parametrize("text, reason", [
    ('{"run": "RUN", "steps": NaN}', "NaN is not a JSON number"),
    ('{"run": "RUN", "created": Infinity}', "Infinity is not a JSON number"),
    ("[" * 100_000 + "]" * 100_000, "unreadable"),
    ('{"run": "RUN", "notes": "' + "x" * (2 << 20) + '"}', "over 1024 KB"),
], ids=["nan", "infinity", "deep-json", "huge"])
def test_non_json_numbers_deep_nesting_and_huge_files_are_damage_too(tmp_path, text, reason):
    store = dx.RunStore(tmp_path / "runs")
    good, bad = record(store, "good"), record(store, "bad")
    (store.root / bad / "meta.json").write_text(text.replace("RUN", bad))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = store.runs()
    assert list(runs["run"]) == [good]
    assert reason in str(caught[0].message)


def test_a_damaged_annotations_file_is_ignored_and_the_run_still_reads(tmp_path):
    store = dx.RunStore(tmp_path / "runs")
    run = record(store, "kept name")
    (store.root / run / "annotations.json").write_text(json.dumps({"name": {"not": "a string"}}))
    with pytest.warns(RuntimeWarning, match="annotations.json is unreadable or invalid"):
        runs = store.runs()
    assert list(runs["name"]) == ["kept name"]
