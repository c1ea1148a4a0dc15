"""The on-disk layout of a run store: file names, atomic writes, and reading a table's live Parquet files.

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
reader that lists both keeps the widest file, so it never sees a row twice. Every file name is spelled here
and nowhere else.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..errors import StoreError

#: What a run's tables hold. 1: rows for leaf modules only. 2: rows also for modules that own parameters
#: (layer columns ``kind``, ``shared_with``, ``in_optimizer``; param column ``in_optimizer``). Readers accept
#: every version up to this one; pages use the new columns only where a run has them.
SCHEMA_VERSION = 2
TABLES: tuple[str, ...] = ("layers", "steps", "params", "hist", "blocks")
META_FILE = "meta.json"
ANNOTATIONS_FILE = "annotations.json"
KERNELS_DIR = "kernels"
#: Deleted runs, restorable until the trash is emptied: ``<store>/.trash/<run id>/`` (a dot folder, never a run).
TRASH_DIR = ".trash"
_CHUNK_RE = re.compile(r"^chunk-(\d{8})\.parquet$")
_COMPACT_RE = re.compile(r"^compact-(\d{8})-(\d{8})\.parquet$")
_SNAPSHOT_RE = re.compile(r"^step-(\d{8})\.npz$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOOSE_CHUNKS_BEFORE_COMPACTION = 16
COMPACT_FILES_BEFORE_MERGE = 8


def chunk_name(seq: int) -> str:
    """The file name of a table's ``seq``-th chunk."""
    return f"chunk-{seq:08d}.parquet"


def is_chunk(name: str) -> bool:
    """Whether ``name`` is a chunk written by one flush."""
    return _CHUNK_RE.match(name) is not None


def is_compact(name: str) -> bool:
    """Whether ``name`` is a file merged from several chunks."""
    return _COMPACT_RE.match(name) is not None


def snapshot_name(step: int) -> str:
    """The file name of the kernel snapshot of ``step`` (inside the run's ``kernels/`` folder)."""
    return f"step-{int(step):08d}.npz"


def snapshot_step(name: str) -> int | None:
    """The step of a kernel snapshot file name, or None when ``name`` is not one."""
    m = _SNAPSHOT_RE.match(name)
    return int(m.group(1)) if m else None



def slugify(name: str, limit: int = 40) -> str:
    """Lower-case ``name`` to letters, digits and single dashes (``"run"`` if nothing is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:limit].strip("-")
    return slug or "run"


def new_run_id(name: str) -> str:
    """A unique run id: the slug of ``name``, the UTC start time and a short random suffix."""
    return f"{slugify(name)}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    No fsync: a killed process (even SIGKILL) loses nothing that reached the page cache, and syncing every
    chunk would cost the training loop milliseconds per flush. Only a power loss can lose the last flushes.
    """
    tmp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str).encode())


def dictionary_columns(table: pa.Table) -> list[str]:
    """The columns worth dictionary-encoding: all but the floating-point ones (names, types, steps, flags repeat;
    measured values rarely do, and trying a dictionary on them made writing a chunk about 1.6x slower)."""
    return [f.name for f in table.schema if not pa.types.is_floating(f.type)]


def write_table_atomic(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    pq.write_table(table, tmp, compression="zstd", use_dictionary=dictionary_columns(table))
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_files(table_dir: Path) -> list[tuple[int, int, Path]]:
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


def read_files(paths: Sequence[Path], columns: Sequence[str] | None, filter_expr: pc.Expression | None,
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


def read_table(table_dir: Path, columns: Sequence[str] | None = None,
                filter_expr: pc.Expression | None = None, dictionary: Sequence[str] = ()) -> pa.Table | None:
    """Read one table of a run, pushing column selection and the row filter down to Parquet.

    Retries when a compaction in another process removes a listed file between listing and reading.
    """
    for attempt in range(8):
        files = live_files(table_dir)
        if not files:
            return None
        try:
            return read_files([p for _, _, p in files], columns, filter_expr, dictionary)
        except FileNotFoundError:
            time.sleep(0.02 * (attempt + 1))
    raise StoreError(f"{table_dir} keeps changing under the reader; try again in a moment.")


def steps_filter(steps: Any) -> pc.Expression | None:
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


def and_filters(a: pc.Expression | None, b: pc.Expression | None) -> pc.Expression | None:
    if a is None:
        return b
    if b is None:
        return a
    return a & b


def merge(table_dir: Path, files: Sequence[tuple[int, int, Path]]) -> None:
    """Merge consecutive files into one ``compact-<lo>-<hi>.parquet``, then delete what it covers."""
    if len(files) < 2:
        return
    lo, hi = files[0][0], files[-1][1]
    tables = [pq.read_table(p) for _, _, p in files]
    merged = pa.concat_tables(tables, promote_options="permissive")
    write_table_atomic(table_dir / f"compact-{lo:08d}-{hi:08d}.parquet", merged)
    for _, _, path in files:
        path.unlink(missing_ok=True)


def compact_table(table_dir: Path) -> None:
    """Merge every file of one table into a single compact file (no-op for zero or one file)."""
    merge(table_dir, live_files(table_dir))


#: A kernel snapshot whose members would take more than this uncompressed is refused before any is read (three
#: layers of a large CNN take a few tens of MB; a 1.5 MB crafted .npz can ask for gigabytes).
MAX_SNAPSHOT_BYTES = 256 * 2**20


def check_snapshot_size(path: Path, what: str) -> None:
    """Refuse a snapshot whose zip directory promises more than :data:`MAX_SNAPSHOT_BYTES` (the reader never
    inflates a member past the size its directory gives, so the directory bounds what a load can take)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not an .npz archive: {exc}") from None
    if total > MAX_SNAPSHOT_BYTES:
        raise StoreError(f"{what} would take {total / 2**20:,.0f} MB in "
                         f"memory, more than the {MAX_SNAPSHOT_BYTES // 2**20} MB a snapshot may take")
