"""The run store: runs on disk, appended while training and read by everything else.

Owns the on-disk layout (``layout``: every file name, atomic writes, reading a table's live files), the
writer a training process appends with (``writer``) and the reader every page, export and comparison uses
(``runs``). It may import :mod:`diagnostics.errors` and the column names of :mod:`diagnostics.recording.stats`,
nothing else of the library; nothing outside this package touches a run's folder.
"""

from __future__ import annotations

from .layout import SCHEMA_VERSION, TABLES, new_run_id, slugify
from .runs import KernelSnapshot, RunStore
from .writer import ColumnBuffer, RunWriter

__all__ = ["SCHEMA_VERSION", "TABLES", "ColumnBuffer", "KernelSnapshot", "RunStore", "RunWriter", "new_run_id",
           "slugify"]
