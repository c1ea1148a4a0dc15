"""Reading a run store: the runs, their tables and kernel snapshots, and editing a run's annotations."""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import socket
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import StoreError
from ..recording.stats import BLOCK_COLUMNS, HIST_COLUMNS, LAYER_COLUMNS, PARAM_COLUMNS, STEP_COLUMNS
from .layout import (ANNOTATIONS_FILE, KERNELS_DIR, META_FILE, RUN_ID_RE, SCHEMA_VERSION, TABLES, TRASH_DIR,
                     and_filters, check_snapshot_size, compact_table, new_run_id, pid_alive, read_table,
                     snapshot_name, snapshot_step, steps_filter, write_json_atomic)
from .metadata import SAVE_NAME_CHARS, SAVE_NOTES_CHARS, SAVE_TAG_CHARS, SAVE_TAGS, read_json, validate_meta
from .writer import RunWriter


@dataclass(frozen=True)
class KernelSnapshot:
    """The kernels of one recorded step: ``arrays[layer][kind]`` with kind in ``grad``/``weight``/``update``."""

    step: int
    arrays: dict[str, dict[str, np.ndarray]]


class RunStore:
    """An embedded store of runs under one directory; safe to read while another process writes.

    Args:
        root: The store directory (created on the first write). Default ``./runs``.
    """

    def __init__(self, root: str | os.PathLike[str] = "runs") -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # -- writing -------------------------------------------------------------------------------------------
    def create_run(self, name: str, meta: Mapping[str, Any] | None = None, **writer_options: Any) -> RunWriter:
        """Create a new run directory and return its writer.

        Args:
            name: Human name of the run (kept in the metadata; the id is made from it and the start time).
            meta: Extra metadata (model class, parameter count, config, group id, ...), JSON-serialisable.
            **writer_options: ``flush_every`` and ``flush_seconds`` for :class:`RunWriter`.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(16):
            run_id = new_run_id(name)
            run_dir = self.root / run_id
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 16 collisions of a random suffix in one second
            raise StoreError(f"could not create a unique run directory under {self.root}")
        full_meta: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run": run_id,
            "name": name,
            "created": time.time(),
            "status": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "steps": 0,
        }
        full_meta.update(dict(meta or {}))
        return RunWriter(run_dir, full_meta, **writer_options)

    # -- reading -------------------------------------------------------------------------------------------
    def run_ids(self) -> list[str]:
        """Ids of the readable runs, oldest first; unreadable entries are skipped with a warning."""
        return [m["run"] for m in self._metas()]

    def _metas(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        metas = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                warnings.warn(f"run store {self.root}: skipping {entry.name!r}, which is not a run directory",
                              RuntimeWarning, stacklevel=3)
                continue
            try:
                metas.append(self._meta_of(entry))
            except StoreError as exc:
                warnings.warn(f"run store {self.root}: skipping {entry.name!r}: {exc}", RuntimeWarning,
                              stacklevel=3)
        metas.sort(key=lambda m: m.get("created", 0.0))
        return metas

    def _meta_of(self, run_dir: Path) -> dict[str, Any]:
        meta_path = run_dir / META_FILE
        try:
            meta = read_json(meta_path)
        except FileNotFoundError:
            raise StoreError("it has no meta.json (not a run, or a run deleted while being read)") from None
        except OSError as exc:
            raise StoreError(f"its meta.json is unreadable ({exc})") from None
        if not isinstance(meta, dict) or meta.get("run") != run_dir.name:
            raise StoreError("its meta.json does not describe this directory")
        validate_meta(meta)
        if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
            raise StoreError(f"it was written by a newer version (schema {meta['schema_version']}); "
                             "upgrade gradient-flow-diagnostics to read it")
        annotations = run_dir / ANNOTATIONS_FILE
        if annotations.is_file():
            try:
                extra = read_json(annotations)
                if isinstance(extra, dict):
                    extra = {k: extra[k] for k in ("name", "tags", "notes") if k in extra}
                    validate_meta(extra, ANNOTATIONS_FILE)
                    meta.update(extra)
            except (OSError, StoreError):
                warnings.warn(f"run {run_dir.name}: annotations.json is unreadable or invalid and was ignored",
                              RuntimeWarning, stacklevel=3)
        meta["status"] = self._status(meta)
        return meta

    @staticmethod
    def _status(meta: Mapping[str, Any]) -> str:
        status = str(meta.get("status", "unknown"))
        if status == "running" and meta.get("host") == socket.gethostname():
            pid = meta.get("pid")
            if isinstance(pid, int) and not pid_alive(pid):
                return "crashed"
        return status

    def _run_dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or run_id in (".", ".."):
            raise StoreError(f"{run_id!r} is not a valid run id (see RunStore.runs() for the ids)")
        run_dir = self.root / run_id
        if not (run_dir / META_FILE).is_file():
            raise StoreError(f"no run {run_id!r} in {self.root}; RunStore.runs() lists the runs there")
        return run_dir

    def meta(self, run_id: str) -> dict[str, Any]:
        """The metadata of one run (with display name, tags and notes applied and the live status)."""
        return self._meta_of(self._run_dir(run_id))

    def runs(self) -> pd.DataFrame:
        """One row per run: id, name, created, status, model, parameters, steps, layers, size, tags, notes, and
        the training framework that recorded it (``framework``: "lightning", "transformers", ...; "" for a
        hand-written loop)."""
        rows = []
        for meta in self._metas():
            run_dir = self.root / meta["run"]
            rows.append({
                "run": meta["run"],
                "name": meta.get("name", meta["run"]),
                "created": pd.Timestamp(meta.get("created", 0.0), unit="s", tz="UTC"),
                "status": meta["status"],
                "model": meta.get("model", ""),
                "parameters": meta.get("parameters", math.nan),
                "steps": int(meta.get("steps", 0)),
                "layers": int(meta.get("layers", 0)),
                "size_bytes": _dir_size(run_dir),
                "tags": ", ".join(meta.get("tags", []) or []),
                "notes": meta.get("notes", ""),
                "group": meta.get("group", ""),
                "framework": str(meta.get("framework") or ""),
            })
        columns = ["run", "name", "created", "status", "model", "parameters", "steps", "layers",
                   "size_bytes", "tags", "notes", "group", "framework"]
        return pd.DataFrame(rows, columns=columns)

    def _table(self, run_id: str, table: str, columns: Sequence[str] | None,
               filter_expr: pc.Expression | None) -> pd.DataFrame:
        run_dir = self._run_dir(run_id)
        try:
            result = read_table(run_dir / table, columns, filter_expr)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"run {run_id}: the {table} table could not be read ({exc})") from exc
        if result is None:
            default = {"layers": LAYER_COLUMNS, "steps": STEP_COLUMNS, "params": PARAM_COLUMNS,
                       "hist": HIST_COLUMNS, "blocks": BLOCK_COLUMNS}[table]
            return pd.DataFrame(columns=list(columns) if columns else list(default))
        return result.to_pandas()

    def arrow_table(self, run_id: str, table: str, columns: Sequence[str] | None = None,
                    dictionary: Sequence[str] = ()) -> pa.Table | None:
        """One table of a run as Arrow (no pandas conversion); ``dictionary`` columns come dictionary-encoded.

        Returns None when the run has no rows in that table yet.
        """
        run_dir = self._run_dir(run_id)
        try:
            return read_table(run_dir / table, columns, None, dictionary)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"run {run_id}: the {table} table could not be read ({exc})") from exc

    def step_frame(self, run_id: str, steps: Any = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per recorded step: loss, metrics, total gradient norm, first non-finite layers."""
        frame = self._table(run_id, "steps", columns, steps_filter(steps))
        return frame.sort_values("step", kind="stable").reset_index(drop=True) if "step" in frame else frame

    def frame(self, run_id: str, layers: Iterable[str] | None = None, steps: Any = None,
              columns: Sequence[str] | None = None, join_steps: bool = True) -> pd.DataFrame:
        """One row per (step, layer), with the per-step columns (loss, metrics, total norm) joined in.

        Args:
            run_id: The run's id.
            layers: Qualified layer names to read (default all).
            steps: ``None``, an inclusive ``(lo, hi)`` pair, a single step or an iterable of steps.
            columns: Columns to read (default all); ``step`` and ``layer`` are always included.
            join_steps: Join the per-step table's columns (loss, metrics, ...) into the rows.
        """
        expr = steps_filter(steps)
        if layers is not None:
            expr = and_filters(expr, pc.field("layer").isin(list(layers)))
        wanted = None if columns is None else list(dict.fromkeys(["step", "layer", *columns]))
        frame = self._table(run_id, "layers", wanted, expr)
        if join_steps and not frame.empty:
            step_cols = None
            if columns is not None:
                step_cols = [c for c in columns if c not in frame.columns]
                if not step_cols:
                    step_cols = None
                    join_steps = False
                else:
                    step_cols = ["step", *step_cols]
            if join_steps:
                steps_df = self._table(run_id, "steps", step_cols, steps_filter(steps))
                extra = [c for c in steps_df.columns if c not in frame.columns or c == "step"]
                if len(extra) > 1:
                    frame = frame.merge(steps_df[extra], on="step", how="left")
        if "step" in frame and "depth" in frame:
            frame = frame.sort_values(["step", "depth"], kind="stable").reset_index(drop=True)
        return frame

    def param_frame(self, run_id: str, steps: Any = None, params: Iterable[str] | None = None,
                    columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per (step, parameter with a gradient)."""
        expr = steps_filter(steps)
        if params is not None:
            expr = and_filters(expr, pc.field("param").isin(list(params)))
        return self._table(run_id, "params", columns, expr)

    def histogram_frame(self, run_id: str, layers: Iterable[str] | None = None, steps: Any = None,
                        kind: str | None = None) -> pd.DataFrame:
        """The recorded log10|g| histograms: one row per (step, layer, kind) with a ``counts`` list.

        The bin edges are in ``meta(run_id)["hist_edges"]``; ``zeros`` and ``nonfinite`` are separate columns.
        """
        expr = steps_filter(steps)
        if layers is not None:
            expr = and_filters(expr, pc.field("layer").isin(list(layers)))
        if kind is not None:
            expr = and_filters(expr, pc.field("kind") == kind)
        return self._table(run_id, "hist", None, expr)

    def block_frame(self, run_id: str, steps: Any = None) -> pd.DataFrame:
        """Backward gain per (step, block), for runs recorded with ``blocks=`` (empty otherwise)."""
        frame = self._table(run_id, "blocks", None, steps_filter(steps))
        return frame.sort_values(["step", "depth"], kind="stable").reset_index(drop=True) if len(frame) else frame

    def kernel_steps(self, run_id: str) -> list[int]:
        """Steps that have a kernel snapshot."""
        kdir = self._run_dir(run_id) / KERNELS_DIR
        if not kdir.is_dir():
            return []
        return sorted(s for s in (snapshot_step(entry.name) for entry in kdir.iterdir()) if s is not None)

    def has_kernels(self, run_id: str) -> bool:
        """Whether the run has a kernel-snapshot folder (cheap: nothing is read)."""
        return (self.root / run_id / KERNELS_DIR).is_dir()

    def run_version(self, run_id: str) -> int:
        """A number that changes whenever the run's writer flushes or its annotations change (0 if unreadable).

        For caches in front of the store: equal versions mean the run's files are unchanged.
        """
        return hash(tuple(self._stamps(self.root / run_id)))

    def version(self) -> tuple:
        """A value that changes whenever a run is added, removed, written or annotated (for caches)."""
        if not self.root.is_dir():
            return ()
        return tuple((entry.name, *self._stamps(entry)) for entry in sorted(self.root.iterdir()))

    @staticmethod
    def _stamps(run_dir: Path) -> list[int]:
        stamps = []
        for name in (META_FILE, ANNOTATIONS_FILE):
            try:
                stamps.append((run_dir / name).stat().st_mtime_ns)
            except OSError:
                stamps.append(0)
        return stamps

    def kernel_snapshot(self, run_id: str, step: int) -> KernelSnapshot:
        """The kernel snapshot of one step (loaded with ``allow_pickle=False``)."""
        path = self._run_dir(run_id) / KERNELS_DIR / snapshot_name(step)
        try:
            check_snapshot_size(path, f"run {run_id}: kernel snapshot of step {step}")
            with np.load(path, allow_pickle=False) as data:
                arrays: dict[str, dict[str, np.ndarray]] = {}
                for key in data.files:
                    layer, _, kind = key.rpartition("|")
                    arrays.setdefault(layer, {})[kind] = data[key]
        except FileNotFoundError:
            raise StoreError(f"run {run_id} has no kernel snapshot at step {step}; "
                             f"available: {self.kernel_steps(run_id)}") from None
        except StoreError:
            raise
        except (OSError, ValueError) as exc:
            raise StoreError(f"run {run_id}: kernel snapshot of step {step} is unreadable ({exc})") from exc
        return KernelSnapshot(step=int(step), arrays=arrays)

    # -- editing -------------------------------------------------------------------------------------------
    def _annotate(self, run_id: str, **changes: Any) -> None:
        run_dir = self._run_dir(run_id)
        path = run_dir / ANNOTATIONS_FILE
        current: dict[str, Any] = {}
        if path.is_file():
            try:
                current = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                current = {}
        current.update(changes)
        write_json_atomic(path, current)

    def rename(self, run_id: str, name: str) -> None:
        """Change a run's display name (the id stays; safe while the run is being written).

        Raises:
            StoreError: The name is empty or longer than :data:`~.metadata.SAVE_NAME_CHARS` characters.
        """
        if not name.strip():
            raise StoreError("a run name cannot be empty")
        if len(name.strip()) > SAVE_NAME_CHARS:
            raise StoreError(f"a run name may have at most {SAVE_NAME_CHARS} characters, not {len(name.strip()):,}")
        self._annotate(run_id, name=name.strip())

    def set_tags(self, run_id: str, tags: Iterable[str]) -> None:
        """Replace a run's tags (at most :data:`~.metadata.SAVE_TAGS`, each at most ``SAVE_TAG_CHARS`` long)."""
        kept = sorted({t.strip() for t in tags if t.strip()})
        if len(kept) > SAVE_TAGS or any(len(t) > SAVE_TAG_CHARS for t in kept):
            raise StoreError(f"a run may have at most {SAVE_TAGS} tags of at most {SAVE_TAG_CHARS} characters each")
        self._annotate(run_id, tags=kept)

    def set_notes(self, run_id: str, notes: str) -> None:
        """Replace a run's free-text notes (at most :data:`~.metadata.SAVE_NOTES_CHARS` characters)."""
        if len(notes) > SAVE_NOTES_CHARS:
            raise StoreError(f"notes may have at most {SAVE_NOTES_CHARS:,} characters, not {len(notes):,}")
        self._annotate(run_id, notes=notes)

    def delete(self, run_id: str, force: bool = False) -> None:
        """Move a run to the store's trash (restorable with :meth:`restore` until :meth:`empty_trash`).

        A run that is still being written is refused unless ``force=True``.
        """
        run_dir = self._run_dir(run_id)
        if not force and self._status(json.loads((run_dir / META_FILE).read_text())) == "running":
            raise StoreError(f"run {run_id} is still being written; stop training first or pass force=True")
        trash = self.root / TRASH_DIR
        trash.mkdir(exist_ok=True)
        if (trash / run_id).exists():      # deleted before, restored, deleted again: keep the newest copy
            self._remove(trash / run_id)
        os.replace(run_dir, trash / run_id)  # one rename: a reader sees the whole run or none of it

    def trashed(self) -> pd.DataFrame:
        """The deleted runs still in the trash: ``run``, ``name``, ``deleted`` (time), newest first."""
        rows = []
        trash = self.root / TRASH_DIR
        for entry in sorted(trash.iterdir()) if trash.is_dir() else []:
            if not RUN_ID_RE.match(entry.name) or not entry.is_dir():
                continue
            try:
                meta = read_json(entry / META_FILE)
                name = meta.get("name", entry.name) if isinstance(meta, dict) else entry.name
            except (OSError, StoreError):
                name = entry.name
            annotations = entry / ANNOTATIONS_FILE
            try:
                extra = read_json(annotations) if annotations.is_file() else {}
                name = extra.get("name", name) if isinstance(extra, dict) else name
            except (OSError, StoreError):
                pass
            rows.append({"run": entry.name, "name": str(name),
                         "deleted": pd.Timestamp(entry.stat().st_mtime, unit="s", tz="UTC")})
        frame = pd.DataFrame(rows, columns=["run", "name", "deleted"])
        return frame.sort_values("deleted", ascending=False, kind="stable").reset_index(drop=True)

    def restore(self, run_id: str) -> None:
        """Move a deleted run back from the trash.

        Raises:
            StoreError: It is not in the trash, or a run with its id exists again.
        """
        if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
            raise StoreError(f"{run_id!r} is not a valid run id")
        source = self.root / TRASH_DIR / run_id
        if not source.is_dir():
            raise StoreError(f"run {run_id} is not in the trash (emptied already?)")
        if (self.root / run_id).exists():
            raise StoreError(f"a run {run_id} exists in the store already; delete it first")
        os.replace(source, self.root / run_id)

    def empty_trash(self) -> int:
        """Delete every run in the trash for good; returns how many there were."""
        trash = self.root / TRASH_DIR
        if not trash.is_dir():
            return 0
        count = sum(1 for e in trash.iterdir() if e.is_dir())
        self._remove(trash)
        return count

    def _remove(self, path: Path) -> None:
        # Rename first so that a concurrent reader never sees a half-removed folder under its old name.
        doomed = self.root / f".deleted-{path.name}-{secrets.token_hex(3)}"
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def compact(self, run_id: str) -> None:
        """Merge each table of a run that is not running into one file (e.g. a crashed run's chunks)."""
        meta = self.meta(run_id)
        if meta["status"] == "running":
            raise StoreError(f"run {run_id} is still being written; its writer compacts it when it finishes")
        for table in TABLES:
            compact_table(self.root / run_id / table)


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                continue
    return total
