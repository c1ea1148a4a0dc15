"""Shared page pieces: the sidebar store picker, cached store readers and friendly error display."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

import diagnostics as dx

DEFAULT_STORE = os.environ.get("GFD_STORE", "runs")


def store_root() -> str:
    """The store directory chosen in the sidebar (default ``./runs`` or ``$GFD_STORE``)."""
    return st.session_state.get("store_root", DEFAULT_STORE)


def sidebar_store_picker() -> None:
    """The sidebar's store field; shared by every page through ``app.py``."""
    st.sidebar.text_input(
        "Run store directory", value=store_root(), key="store_root",
        help="A folder of recorded runs. Training scripts write to it with dx.RunStore(path).")
    root = Path(store_root()).expanduser()
    if not root.exists():
        st.sidebar.caption("This folder does not exist yet; it is created when the first run is recorded.")


def _store_signature(root: str) -> tuple:
    """Changes whenever a run is added, removed or written (so cached reads refresh)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        return ()
    sig = []
    for entry in sorted(path.iterdir()):
        for name in ("meta.json", "annotations.json"):
            f = entry / name
            try:
                sig.append((entry.name, name, f.stat().st_mtime_ns))
            except OSError:
                continue
    return tuple(sig)


@st.cache_data(show_spinner=False, max_entries=32)
def _runs(root: str, signature: tuple) -> pd.DataFrame:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = dx.RunStore(root).runs()
    runs.attrs["warnings"] = [str(w.message) for w in caught]
    return runs


def load_runs() -> pd.DataFrame:
    """The runs of the chosen store (cached until a run changes); skipped entries are shown as warnings."""
    root = store_root()
    runs = _runs(root, _store_signature(root))
    for message in runs.attrs.get("warnings", []):
        st.warning(message)
    return runs
