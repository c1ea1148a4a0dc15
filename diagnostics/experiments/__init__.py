"""Experiments: the CNN family, its datasets, training under identical conditions and comparisons read back.

Owns the configurable CNN (``models``), the datasets (``data``), the training loop and its configuration
(``training``), distributed training (``distributed``), the dashboard's background job (``jobs``) and reading a
finished comparison back from the store (``comparison``). It may import :mod:`diagnostics.errors`,
:mod:`diagnostics.recording` (the monitor records every step) and :mod:`diagnostics.store`; never the views.
"""
