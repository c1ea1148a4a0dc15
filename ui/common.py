"""Shared page pieces: the sidebar store picker, cached store readers and friendly error display."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import streamlit as st

import diagnostics as dx
from diagnostics.errors import AccessError
from diagnostics.views.text import markdown_text, message_text, one_line

from .access import confine, read_only, settings, show_bug


def require_router() -> None:
    """Make sure a page runs inside ``app.py``'s navigation, also when opened by its URL first.

    Streamlit keeps a legacy mode for apps with a ``pages/`` folder: until some session has called
    ``st.navigation``, a request for ``/<page>`` runs that page's script on its own (no sidebar, no shared
    setup). Each page calls this first; in that mode, for a session that has not been through ``app.py`` yet,
    it switches the process to ``st.navigation`` and reruns, which runs ``app.py`` and routes to the same page.
    """
    if st.session_state.get(_ROUTED):
        return
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - a future Streamlit without the legacy mode
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_ROUTED = "_gfd_routed"


def mark_routed() -> None:
    """Called by ``app.py``: this session's pages run inside the router."""
    st.session_state[_ROUTED] = True


def store_root() -> str:
    """The store directory chosen in the sidebar (default the launch store, ``$GFD_STORE`` or ``./runs``).

    A folder outside the roots given at launch is never used: the launch store stands in for it (the sidebar
    says why).
    """
    chosen = st.session_state.get("store_root", settings().store)
    try:
        confine(chosen, "The run store")
    except AccessError:
        return settings().store
    return chosen


def sidebar_store_picker() -> None:
    """The sidebar's store field (fixed in read-only mode); shared by every page through ``app.py``."""
    st.session_state.setdefault("store_root", settings().store)
    st.sidebar.text_input(
        "Run store directory", key="store_root", disabled=read_only(),
        help="A folder of recorded runs, inside the folders this dashboard was started with. Training scripts "
             "write to it with dx.RunStore(path).")
    try:
        root = confine(st.session_state["store_root"], "The run store")
    except AccessError as exc:
        st.sidebar.error(f"{markdown_text(exc, 600)}. Showing `{markdown_text(store_root())}` instead.",
                         icon=":material/block:")
        return
    if not root.exists():
        st.sidebar.caption("This folder does not exist yet; it is created when the first run is recorded.")


def store_version(root: str) -> tuple:
    """Changes whenever a run is added, removed or written (so cached reads refresh)."""
    return dx.RunStore(root).version()


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
    runs = _runs(root, store_version(root))
    skipped = runs.attrs.get("warnings", [])
    if skipped:
        shown = "\n".join(f"- {markdown_text(m, 300)}" for m in skipped[:5])     # reasons quote file contents
        more = f"\n- … and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        st.warning(f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} in `{root}` skipped (not readable "
                   f"runs; nothing was changed):\n{shown}{more}")
    return runs


def runs_or_stop() -> pd.DataFrame:
    """The runs of the chosen store; stops the page with a hint when there are none yet."""
    runs = load_runs()
    if runs.empty:
        st.info("No runs yet. Record one from your training script (see the Runs page), then come back here.")
        st.stop()
    return runs


def run_signature(root: str, run: str) -> int:
    """Changes whenever the run's writer flushes (so a running run's cached data refreshes)."""
    return dx.RunStore(root).run_version(run)


@st.cache_resource(show_spinner=False, max_entries=48)      # each at most views.matrices.MAX_CELLS (32 MB)
def _stat_matrix(root: str, run: str, stat: str, signature: int):
    from diagnostics.views.matrices import load_stat_matrix

    return load_stat_matrix(dx.RunStore(root), run, stat)


@st.cache_resource(show_spinner=False, max_entries=64)
def _step_frame(root: str, run: str, signature: int) -> pd.DataFrame:
    from diagnostics.views.gradient_flow import StoreLoader

    return StoreLoader(dx.RunStore(root)).step_frame(run)


@st.cache_resource(show_spinner=False, max_entries=64)
def _histograms(root: str, run: str, layer: str, kind: str, signature: int):
    from diagnostics.views.matrices import load_histograms

    return load_histograms(dx.RunStore(root), run, layer, kind)


@st.cache_data(show_spinner=False, max_entries=64)
def _block_frame(root: str, run: str, signature: int) -> pd.DataFrame:
    return dx.RunStore(root).block_frame(run)


class StreamlitLoader:
    """The views' loader with Streamlit's cache in front of the store (read-only results, never copied)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def stat_matrix(self, run: str, stat: str):
        return _stat_matrix(self.root, run, stat, run_signature(self.root, run))

    def step_frame(self, run: str) -> pd.DataFrame:
        return _step_frame(self.root, run, run_signature(self.root, run))

    def histograms(self, run: str, layer: str, kind: str):
        return _histograms(self.root, run, layer, kind, run_signature(self.root, run))

    def block_frame(self, run: str) -> pd.DataFrame:
        return _block_frame(self.root, run, run_signature(self.root, run))


def run_labels(runs: pd.DataFrame) -> dict[str, str]:
    """Run id -> the label shown in pickers and legends (its name, with the id when names repeat)."""
    counts = runs["name"].value_counts()
    return {r.run: one_line(r.name if counts[r.name] == 1 else f"{r.name} ({r.run[-4:]})") for r in runs.itertuples()}


def pick_runs(runs: pd.DataFrame, key: str, multi: bool = True, label: str = "Runs",
              fallback: list[str] | None = None) -> list[str]:
    """A run picker; defaults to the runs chosen on the Runs page, else ``fallback``, else the newest run."""
    labels = run_labels(runs)
    options = list(runs["run"])
    chosen = [r for r in st.session_state.get("selected_runs", []) if r in options] or \
        [r for r in (fallback or []) if r in options] or options[-1:]
    if multi:
        return st.multiselect(label, options, default=chosen, format_func=labels.get, key=key)
    picked = st.selectbox(label, options, index=options.index(chosen[0]), format_func=labels.get, key=key)
    return [picked] if picked else []


class Guard:
    """What :func:`guard` saw: ``failed`` is True when the block raised (and the error was shown)."""

    failed = False


@contextmanager
def guard(what: str, expected: type[Exception] | None = None, prefix: str = "") -> Iterator[Guard]:
    """Show an error of the block where it happened: the library's as a message, anything else as a bug.

    A :class:`~diagnostics.DiagnosticsError` says what to do, so it is shown with ``st.error``; any other
    exception is a bug and is shown with its traceback (``st.exception``; on a shared dashboard its type and
    message only, the traceback going to the server's console), in the container the block writes to, so one
    bad run or widget never blanks the rest of the page. Streamlit's own stop and rerun signals are
    ``BaseException`` and pass through. An ``expected`` library error (a widget's own refusal) is shown as
    ``prefix`` and its message alone. Messages quote names from files, so links, images and tags in them are
    escaped (:func:`~diagnostics.views.text.message_text`).

    Example::

        with guard(f"read run {run}") as g:
            steps = store.kernel_steps(run)
        if g.failed:
            st.stop()
    """
    outcome = Guard()
    try:
        yield outcome
    except dx.DiagnosticsError as exc:
        outcome.failed = True
        if expected is not None and isinstance(exc, expected):       # the widget's own, expected refusal
            st.error(message_text(f"{prefix} {exc}".strip()), icon=":material/block:")
        else:                                                          # messages quote names from files
            st.error(f"Could not {message_text(what, 300)}: {message_text(exc)}")
    except Exception as exc:  # noqa: BLE001 - not hidden: shown with its traceback where it happened
        outcome.failed = True
        show_bug(exc)


@st.cache_resource(show_spinner=False, max_entries=8)       # each at most store.layout.MAX_SNAPSHOT_BYTES
def kernel_snapshot(root: str, run: str, step: int, signature: int):
    """A run's kernel snapshot at one step (cached; read-only)."""
    return dx.RunStore(root).kernel_snapshot(run, step)
