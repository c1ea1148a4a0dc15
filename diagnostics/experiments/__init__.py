"""Experiments: the CNN family, its datasets, training under identical conditions and comparisons read back.

Owns the configurable CNN (``models``), the datasets (``data``), the training loop and its configuration
(``training``), batch norm across processes (``syncbn``), starting a comparison in this or other processes
(``launch``: ``dx.compare``), the dashboard's background job (``jobs``) and reading a finished comparison back
from the store (``comparison``). It may import :mod:`diagnostics.errors`,
:mod:`diagnostics.recording` (the monitor records every step) and :mod:`diagnostics.store`; never the views.
"""
