"""The run store: one directory per run, Parquet chunks appended while training, read by the dashboard.

Layout of a store root (default ``./runs``)::

    <run_id>/
        meta.json          written only by the training process (atomic replace)
        annotations.json   written only by readers: display name, tags, notes (atomic replace)
        layers/            per-(step, layer) table      chunk-<seq>.parquet, compact-<lo>-<hi>.parquet
        steps/             per-step table
        params/            per-(step, parameter) table
        hist/              per-(step, layer, kind) log10|g| histograms
        kernels/           step-<step>.npz kernel snapshots (dL/dW, W, ΔW of chosen conv layers)

Every file is written to a temporary name and moved into place with :func:`os.replace`, so a reader never
sees half a file and a writer killed with SIGKILL loses only the steps it had not flushed. Compaction writes
``compact-<lo>-<hi>.parquet`` (covering chunk sequence numbers lo..hi) before deleting what it covers; a
reader that lists both keeps the widest file, so it never sees a row twice.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import socket
import threading
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
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .errors import StoreError
from .recording.stats import HIST_COLUMNS, LAYER_COLUMNS, PARAM_COLUMNS, STEP_COLUMNS

SCHEMA_VERSION = 1
TABLES: tuple[str, ...] = ("layers", "steps", "params", "hist")
_CHUNK_RE = re.compile(r"^chunk-(\d{8})\.parquet$")
_COMPACT_RE = re.compile(r"^compact-(\d{8})-(\d{8})\.parquet$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LOOSE_CHUNKS_BEFORE_COMPACTION = 16
_COMPACT_FILES_BEFORE_MERGE = 8


def slugify(name: str, limit: int = 40) -> str:
    """Lower-case ``name`` to letters, digits and single dashes (``"run"`` if nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:limit].strip("-")
    return slug or "run"


def new_run_id(name: str) -> str:
    """A unique run id: the slug of ``name``, the UTC start time and a short random suffix."""
    return f"{slugify(name)}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    No fsync: a killed process (even SIGKILL) loses nothing that reached the page cache, and syncing every
    chunk would cost the training loop milliseconds per flush. Only a power loss can lose the last flushes.
    """
    tmp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    _write_atomic(path, json.dumps(obj, indent=2, default=str).encode())


def _write_table_atomic(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_files(table_dir: Path) -> list[tuple[int, int, Path]]:
    """The files of one table that together hold every flushed row exactly once: ``(lo, hi, path)``."""
    if not table_dir.is_dir():
        return []
    spans: list[tuple[int, int, Path]] = []
    for entry in table_dir.iterdir():
        if (m := _CHUNK_RE.match(entry.name)):
            seq = int(m.group(1))
            spans.append((seq, seq, entry))
        elif (m := _COMPACT_RE.match(entry.name)):
            spans.append((int(m.group(1)), int(m.group(2)), entry))
    # A file whose span lies inside a wider file's span was merged into it (its deletion may still be
    # pending): keep only the widest.
    spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    kept: list[tuple[int, int, Path]] = []
    for lo, hi, path in spans:
        if kept and lo <= kept[-1][1]:
            continue
        kept.append((lo, hi, path))
    return kept


def _read_files(paths: Sequence[Path], columns: Sequence[str] | None, filter_expr: pc.Expression | None,
                dictionary: Sequence[str] = ()) -> pa.Table:
    schemas = [pq.read_schema(p) for p in paths]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    if dictionary:
        # Read repeated strings (layer names) as dictionary arrays straight from Parquet's dictionary pages.
        fields = [pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in dictionary else f
                  for f in schema]
        schema = pa.schema(fields)
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(dictionary)))
    else:
        fmt = ds.ParquetFileFormat()
    dataset = ds.dataset([str(p) for p in paths], schema=schema, format=fmt)
    if columns is not None:
        columns = [c for c in columns if c in schema.names]
    return dataset.to_table(columns=columns, filter=filter_expr)


def _read_table(table_dir: Path, columns: Sequence[str] | None = None,
                filter_expr: pc.Expression | None = None, dictionary: Sequence[str] = ()) -> pa.Table | None:
    """Read one table of a run, pushing column selection and the row filter down to Parquet.

    Retries when a compaction in another process removes a listed file between listing and reading.
    """
    for attempt in range(8):
        files = _live_files(table_dir)
        if not files:
            return None
        try:
            return _read_files([p for _, _, p in files], columns, filter_expr, dictionary)
        except FileNotFoundError:
            time.sleep(0.02 * (attempt + 1))
    raise StoreError(f"{table_dir} keeps changing under the reader; try again in a moment.")


def _steps_filter(steps: Any) -> pc.Expression | None:
    """A filter on the ``step`` column from ``None``, a ``(lo, hi)`` inclusive pair, a range or an iterable."""
    if steps is None:
        return None
    field = pc.field("step")
    if isinstance(steps, tuple) and len(steps) == 2:
        lo, hi = steps
        expr = None
        if lo is not None:
            expr = field >= int(lo)
        if hi is not None:
            expr = (field <= int(hi)) if expr is None else expr & (field <= int(hi))
        return expr
    if isinstance(steps, int):
        return field == steps
    return field.isin([int(s) for s in steps])


def _and(a: pc.Expression | None, b: pc.Expression | None) -> pc.Expression | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


class ColumnBuffer:
    """Rows gathered as Python lists per column; a column that appears later is padded with nulls."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {}
        self.rows = 0

    def __len__(self) -> int:
        return self.rows

    def extend(self, columns: Mapping[str, Sequence[Any]]) -> None:
        """Append equal-length columns."""
        if not columns:
            return
        n = len(next(iter(columns.values())))
        for key, values in columns.items():
            target = self.columns.get(key)
            if target is None:
                target = self.columns[key] = [None] * self.rows
            target.extend(values)
        for key, target in self.columns.items():
            if key not in columns:
                target.extend([None] * n)
        self.rows += n

    def to_table(self) -> pa.Table:
        """The buffered rows as an Arrow table."""
        return pa.table(self.columns)

    def clear(self) -> None:
        """Forget every row."""
        self.columns = {}
        self.rows = 0


class RunWriter:
    """Appends the tables of one run in atomic Parquet chunks; owned by the recording process.

    Use :meth:`RunStore.create_run` to make one. Rows are buffered and written every ``flush_every`` calls
    of :meth:`maybe_flush` or after ``flush_seconds``, whichever comes first, and at :meth:`close`.
    """

    def __init__(self, run_dir: Path, meta: dict[str, Any], *, flush_every: int = 10,
                 flush_seconds: float = 2.0) -> None:
        self.run_dir = run_dir
        self.run_id = run_dir.name
        self.meta = meta
        self.flush_every = max(1, int(flush_every))
        self.flush_seconds = float(flush_seconds)
        self._buffers: dict[str, ColumnBuffer] = {t: ColumnBuffer() for t in TABLES}
        self._seq: dict[str, int] = {t: 0 for t in TABLES}
        self._pending_steps = 0
        self._last_flush = time.monotonic()
        self._closed = False
        self._broken = False
        self._loose = 0                                   # chunks written since the last compaction started
        self._compactor: threading.Thread | None = None
        for table in TABLES:
            (run_dir / table).mkdir(parents=True, exist_ok=True)
        self._write_meta()

    # -- buffering -----------------------------------------------------------------------------------------
    def append(self, table: str, columns: Mapping[str, Sequence[Any]]) -> None:
        """Buffer rows for ``table`` given as equal-length columns."""
        if table not in self._buffers:
            raise StoreError(f"unknown table {table!r}; expected one of {TABLES}")
        self._buffers[table].extend(columns)

    def end_step(self) -> None:
        """Count one recorded step and flush when the step or time budget is reached."""
        self._pending_steps += 1
        self.meta["steps"] = int(self.meta.get("steps", 0)) + 1
        if (self._pending_steps >= self.flush_every
                or time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        """Write every buffered row as one new chunk per table, then update the run's metadata."""
        if self._broken:
            return
        try:
            if not self.run_dir.is_dir():
                raise FileNotFoundError(self.run_dir)
            for table, buffer in self._buffers.items():
                if not len(buffer):
                    continue
                data = buffer.to_table()
                self._seq[table] += 1
                _write_table_atomic(self.run_dir / table / f"chunk-{self._seq[table]:08d}.parquet", data)
                buffer.clear()
            self._loose += 1
            if self._loose >= _LOOSE_CHUNKS_BEFORE_COMPACTION:
                self._compact_in_background()
            self._pending_steps = 0
            self._last_flush = time.monotonic()
            self._write_meta()
        except OSError as exc:
            # The run directory was deleted by the user or the disk is full: training must go on.
            self._broken = True
            warnings.warn(f"gradient diagnostics: could not write run {self.run_id} ({exc}); recording to "
                          "disk stopped, training continues. Statistics stay available in memory.",
                          RuntimeWarning, stacklevel=2)

    def write_kernels(self, step: int, arrays: Mapping[str, np.ndarray]) -> int:
        """Store one kernel snapshot (``{"<layer>|grad": array, ...}``) atomically; returns its size in bytes."""
        if self._broken:
            return 0
        kdir = self.run_dir / "kernels"
        kdir.mkdir(exist_ok=True)
        import io

        buf = io.BytesIO()
        np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        data = buf.getvalue()
        try:
            _write_atomic(kdir / f"step-{step:08d}.npz", data)
        except OSError as exc:
            warnings.warn(f"gradient diagnostics: kernel snapshot of step {step} not written ({exc})",
                          RuntimeWarning, stacklevel=2)
            return 0
        return len(data)

    def delete_kernels(self, steps: Iterable[int]) -> None:
        """Remove the kernel snapshots of ``steps`` (used to stay within the snapshot budget)."""
        for step in steps:
            (self.run_dir / "kernels" / f"step-{step:08d}.npz").unlink(missing_ok=True)

    def close(self, status: str = "finished") -> None:
        """Flush, compact every table into one file and mark the run ``status``."""
        if self._closed:
            return
        self.flush()
        self._wait_for_compaction()
        self._closed = True
        if self._broken:
            return
        self.meta["status"] = status
        self.meta["finished"] = time.time()
        try:
            for table in TABLES:
                compact_table(self.run_dir / table)
            self._write_meta()
        except OSError as exc:
            warnings.warn(f"gradient diagnostics: could not finish run {self.run_id} ({exc})",
                          RuntimeWarning, stacklevel=2)

    # -- internals -----------------------------------------------------------------------------------------
    def _write_meta(self) -> None:
        self.meta["updated"] = time.time()
        _write_json_atomic(self.run_dir / "meta.json", self.meta)

    def _compact_in_background(self) -> None:
        """Merge the loose chunks in a background thread, so that training does not wait for it.

        Arrow reads and writes Parquet with the GIL released. The chunks stay valid until their merged file is
        in place, so a failed or unfinished merge loses nothing (:meth:`close` merges everything again). One
        merge at a time: while one runs, the next flush starts none.
        """
        if self._compactor is not None and self._compactor.is_alive():
            return
        self._loose = 0
        self._compactor = threading.Thread(target=self._compact_tables, name=f"compact-{self.run_id}",
                                           daemon=True)
        self._compactor.start()

    def _compact_tables(self) -> None:
        try:
            for table in TABLES:
                self._maybe_compact(table)
        except (OSError, pa.ArrowException):
            pass                                          # the chunks are intact; close() compacts again

    def _wait_for_compaction(self) -> None:
        if self._compactor is not None:
            self._compactor.join()
            self._compactor = None

    def _maybe_compact(self, table: str) -> None:
        files = _live_files(self.run_dir / table)
        loose = [f for f in files if f[0] == f[1] and _CHUNK_RE.match(f[2].name)]
        if len(loose) >= _LOOSE_CHUNKS_BEFORE_COMPACTION:
            _merge(self.run_dir / table, loose)
            files = _live_files(self.run_dir / table)
        compacts = [f for f in files if _COMPACT_RE.match(f[2].name)]
        if len(compacts) >= _COMPACT_FILES_BEFORE_MERGE:
            _merge(self.run_dir / table, compacts)


def _merge(table_dir: Path, files: Sequence[tuple[int, int, Path]]) -> None:
    """Merge consecutive files into one ``compact-<lo>-<hi>.parquet``, then delete what it covers."""
    if len(files) < 2:
        return
    lo, hi = files[0][0], files[-1][1]
    tables = [pq.read_table(p) for _, _, p in files]
    merged = pa.concat_tables(tables, promote_options="permissive")
    _write_table_atomic(table_dir / f"compact-{lo:08d}-{hi:08d}.parquet", merged)
    for _, _, path in files:
        path.unlink(missing_ok=True)


def compact_table(table_dir: Path) -> None:
    """Merge every file of one table into a single compact file (no-op for zero or one file)."""
    _merge(table_dir, _live_files(table_dir))


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
        meta_path = run_dir / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise StoreError("it has no meta.json (not a run, or a run deleted while being read)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"its meta.json is unreadable ({exc})") from None
        if not isinstance(meta, dict) or meta.get("run") != run_dir.name:
            raise StoreError("its meta.json does not describe this directory")
        if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
            raise StoreError(f"it was written by a newer version (schema {meta['schema_version']}); "
                             "upgrade gradient-flow-diagnostics to read it")
        annotations = run_dir / "annotations.json"
        if annotations.is_file():
            try:
                extra = json.loads(annotations.read_text())
                if isinstance(extra, dict):
                    meta.update({k: extra[k] for k in ("name", "tags", "notes") if k in extra})
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                warnings.warn(f"run {run_dir.name}: annotations.json is unreadable and was ignored",
                              RuntimeWarning, stacklevel=3)
        meta["status"] = self._status(meta)
        return meta

    @staticmethod
    def _status(meta: Mapping[str, Any]) -> str:
        status = str(meta.get("status", "unknown"))
        if status == "running" and meta.get("host") == socket.gethostname():
            pid = meta.get("pid")
            if isinstance(pid, int) and not _pid_alive(pid):
                return "crashed"
        return status

    def _run_dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or run_id in (".", ".."):
            raise StoreError(f"{run_id!r} is not a valid run id (see RunStore.runs() for the ids)")
        run_dir = self.root / run_id
        if not (run_dir / "meta.json").is_file():
            raise StoreError(f"no run {run_id!r} in {self.root}; RunStore.runs() lists the runs there")
        return run_dir

    def meta(self, run_id: str) -> dict[str, Any]:
        """The metadata of one run (with display name, tags and notes applied and the live status)."""
        return self._meta_of(self._run_dir(run_id))

    def runs(self) -> pd.DataFrame:
        """One row per run: id, name, created, status, model, parameters, steps, layers, size, tags, notes."""
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
            })
        columns = ["run", "name", "created", "status", "model", "parameters", "steps", "layers",
                   "size_bytes", "tags", "notes", "group"]
        return pd.DataFrame(rows, columns=columns)

    def _table(self, run_id: str, table: str, columns: Sequence[str] | None,
               filter_expr: pc.Expression | None) -> pd.DataFrame:
        run_dir = self._run_dir(run_id)
        try:
            result = _read_table(run_dir / table, columns, filter_expr)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"run {run_id}: the {table} table could not be read ({exc})") from exc
        if result is None:
            default = {"layers": LAYER_COLUMNS, "steps": STEP_COLUMNS, "params": PARAM_COLUMNS,
                       "hist": HIST_COLUMNS}[table]
            return pd.DataFrame(columns=list(columns) if columns else list(default))
        return result.to_pandas()

    def arrow_table(self, run_id: str, table: str, columns: Sequence[str] | None = None,
                    dictionary: Sequence[str] = ()) -> pa.Table | None:
        """One table of a run as Arrow (no pandas conversion); ``dictionary`` columns come dictionary-encoded.

        Returns None when the run has no rows in that table yet.
        """
        run_dir = self._run_dir(run_id)
        try:
            return _read_table(run_dir / table, columns, None, dictionary)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"run {run_id}: the {table} table could not be read ({exc})") from exc

    def step_frame(self, run_id: str, steps: Any = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per recorded step: loss, metrics, total gradient norm, first non-finite layers."""
        frame = self._table(run_id, "steps", columns, _steps_filter(steps))
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
        expr = _steps_filter(steps)
        if layers is not None:
            expr = _and(expr, pc.field("layer").isin(list(layers)))
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
                steps_df = self._table(run_id, "steps", step_cols, _steps_filter(steps))
                extra = [c for c in steps_df.columns if c not in frame.columns or c == "step"]
                if len(extra) > 1:
                    frame = frame.merge(steps_df[extra], on="step", how="left")
        if "step" in frame and "depth" in frame:
            frame = frame.sort_values(["step", "depth"], kind="stable").reset_index(drop=True)
        return frame

    def param_frame(self, run_id: str, steps: Any = None, params: Iterable[str] | None = None,
                    columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per (step, parameter with a gradient)."""
        expr = _steps_filter(steps)
        if params is not None:
            expr = _and(expr, pc.field("param").isin(list(params)))
        return self._table(run_id, "params", columns, expr)

    def histogram_frame(self, run_id: str, layers: Iterable[str] | None = None, steps: Any = None,
                        kind: str | None = None) -> pd.DataFrame:
        """The recorded log10|g| histograms: one row per (step, layer, kind) with a ``counts`` list.

        The bin edges are in ``meta(run_id)["hist_edges"]``; ``zeros`` and ``nonfinite`` are separate columns.
        """
        expr = _steps_filter(steps)
        if layers is not None:
            expr = _and(expr, pc.field("layer").isin(list(layers)))
        if kind is not None:
            expr = _and(expr, pc.field("kind") == kind)
        return self._table(run_id, "hist", None, expr)

    def kernel_steps(self, run_id: str) -> list[int]:
        """Steps that have a kernel snapshot."""
        kdir = self._run_dir(run_id) / "kernels"
        if not kdir.is_dir():
            return []
        steps = []
        for entry in kdir.iterdir():
            m = re.match(r"^step-(\d{8})\.npz$", entry.name)
            if m:
                steps.append(int(m.group(1)))
        return sorted(steps)

    def kernel_snapshot(self, run_id: str, step: int) -> KernelSnapshot:
        """The kernel snapshot of one step (loaded with ``allow_pickle=False``)."""
        path = self._run_dir(run_id) / "kernels" / f"step-{int(step):08d}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays: dict[str, dict[str, np.ndarray]] = {}
                for key in data.files:
                    layer, _, kind = key.rpartition("|")
                    arrays.setdefault(layer, {})[kind] = data[key]
        except FileNotFoundError:
            raise StoreError(f"run {run_id} has no kernel snapshot at step {step}; "
                             f"available: {self.kernel_steps(run_id)}") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"run {run_id}: kernel snapshot of step {step} is unreadable ({exc})") from exc
        return KernelSnapshot(step=int(step), arrays=arrays)

    # -- editing -------------------------------------------------------------------------------------------
    def _annotate(self, run_id: str, **changes: Any) -> None:
        run_dir = self._run_dir(run_id)
        path = run_dir / "annotations.json"
        current: dict[str, Any] = {}
        if path.is_file():
            try:
                current = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                current = {}
        current.update(changes)
        _write_json_atomic(path, current)

    def rename(self, run_id: str, name: str) -> None:
        """Change a run's display name (the id stays; safe while the run is being written)."""
        if not name.strip():
            raise StoreError("a run name cannot be empty")
        self._annotate(run_id, name=name.strip())

    def set_tags(self, run_id: str, tags: Iterable[str]) -> None:
        """Replace a run's tags."""
        self._annotate(run_id, tags=sorted({t.strip() for t in tags if t.strip()}))

    def set_notes(self, run_id: str, notes: str) -> None:
        """Replace a run's free-text notes."""
        self._annotate(run_id, notes=notes)

    def delete(self, run_id: str, force: bool = False) -> None:
        """Delete a run. A run that is still being written is refused unless ``force=True``."""
        run_dir = self._run_dir(run_id)
        if not force and self._status(json.loads((run_dir / "meta.json").read_text())) == "running":
            raise StoreError(f"run {run_id} is still being written; stop training first or pass force=True")
        # Rename first so that a concurrent reader never sees a half-deleted run as a run.
        trash = self.root / f".deleted-{run_id}-{secrets.token_hex(3)}"
        os.replace(run_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)

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
