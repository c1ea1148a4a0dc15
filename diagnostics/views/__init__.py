"""Views: stored runs and checks in, plain view objects and Plotly figures out, one view function per page.

Owns the data shaping of a run for charts (``matrices``), every figure with its one palette (``figures``),
the automatic diagnosis (``diagnosis``), the HTML report and exports, and a view per dashboard page
(``gradient_flow``, ``kernels``, ``training_comparison``, ``checks``, ``checkpoint``, with ``catalogue``
(the checkable layers) for ``checks``, and ``gains`` (backward gain per block) and ``sweep`` (depth sweeps,
step-0 ratios) shared by ``gradient_flow`` and ``training_comparison``). It may import every other part of the
library but only the public names of :mod:`diagnostics.recording` and its column names
(:mod:`diagnostics.recording.stats`); it never imports streamlit, so pages, the CLI and scripts share it.
"""
