"""Writing one run while training: rows buffered per table and flushed as atomic Parquet chunks."""

from __future__ import annotations

import io
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import StoreError
from .layout import (COMPACT_FILES_BEFORE_MERGE, KERNELS_DIR, LOOSE_CHUNKS_BEFORE_COMPACTION, META_FILE, TABLES,
                     chunk_name, compact_table, is_chunk, is_compact, live_files, merge, snapshot_name,
                     write_atomic, write_json_atomic, write_table_atomic)


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

    Use :meth:`RunStore.create_run` to make one. Rows are buffered and written every ``flush_every`` recorded
    steps (:meth:`end_step`), after ``flush_seconds`` (default: 2 s, or 1 s with ``flush_every=None``), or once
    ``max_rows`` rows wait, whichever comes first, and at :meth:`close`. ``flush_every=None`` writes by time and
    size only: a training loop of fast steps then
    writes a few chunks a second rather than one every few milliseconds (each flush writes one Parquet file per
    table and the metadata).
    """

    def __init__(self, run_dir: Path, meta: dict[str, Any], *, flush_every: int | None = 10,
                 flush_seconds: float | None = None, max_rows: int = 20_000) -> None:
        self.run_dir = run_dir
        self.run_id = run_dir.name
        self.meta = meta
        self.flush_every = None if flush_every is None else max(1, int(flush_every))
        self.flush_seconds = float(flush_seconds) if flush_seconds is not None else \
            (1.0 if flush_every is None else 2.0)
        self.max_rows = max(1, int(max_rows))
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
        """Count one recorded step and flush when the step, time or size budget is reached."""
        self._pending_steps += 1
        self.meta["steps"] = int(self.meta.get("steps", 0)) + 1
        if ((self.flush_every is not None and self._pending_steps >= self.flush_every)
                or time.monotonic() - self._last_flush >= self.flush_seconds
                or max(len(b) for b in self._buffers.values()) >= self.max_rows):
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
                write_table_atomic(self.run_dir / table / chunk_name(self._seq[table]), data)
                buffer.clear()
            self._loose += 1
            if self._loose >= LOOSE_CHUNKS_BEFORE_COMPACTION:
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
        kdir = self.run_dir / KERNELS_DIR
        kdir.mkdir(exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        data = buf.getvalue()
        try:
            write_atomic(kdir / snapshot_name(step), data)
        except OSError as exc:
            warnings.warn(f"gradient diagnostics: kernel snapshot of step {step} not written ({exc})",
                          RuntimeWarning, stacklevel=2)
            return 0
        return len(data)

    def delete_kernels(self, steps: Iterable[int]) -> None:
        """Remove the kernel snapshots of ``steps`` (used to stay within the snapshot budget)."""
        for step in steps:
            (self.run_dir / KERNELS_DIR / snapshot_name(step)).unlink(missing_ok=True)

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
        write_json_atomic(self.run_dir / META_FILE, self.meta)

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
        files = live_files(self.run_dir / table)
        loose = [f for f in files if f[0] == f[1] and is_chunk(f[2].name)]
        if len(loose) >= LOOSE_CHUNKS_BEFORE_COMPACTION:
            merge(self.run_dir / table, loose)
            files = live_files(self.run_dir / table)
        compacts = [f for f in files if is_compact(f[2].name)]
        if len(compacts) >= COMPACT_FILES_BEFORE_MERGE:
            merge(self.run_dir / table, compacts)
