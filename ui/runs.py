"""The Runs page's table with selection, and the rename / tag / notes / delete controls."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import diagnostics as dx
from diagnostics.views.text import markdown_text, one_line

from .access import read_only, refused_in_read_only
from .common import run_labels, store_root


def runs_table(runs: pd.DataFrame) -> list[str]:
    """The runs as a table; the rows the user ticks become the runs other pages compare."""
    shown = runs[["name", "status", "model", "framework", "steps", "layers", "created", "size_bytes", "tags", "notes",
                  "run"]].copy()
    shown["framework"] = shown["framework"].replace("", "own loop")           # which training stack recorded it
    shown["size (MB)"] = (shown.pop("size_bytes") / 2**20).round(2)
    shown["created"] = shown["created"].dt.strftime("%Y-%m-%d %H:%M:%S")
    event = st.dataframe(shown, hide_index=True, width="stretch", on_select="rerun", selection_mode="multi-row",
                         key="runs_table")
    picked = [runs["run"].iloc[i] for i in event.selection.rows]
    if picked != st.session_state.get("_runs_table_picked", []):      # only a change of ticks overrides
        st.session_state["selected_runs"] = picked
    st.session_state["_runs_table_picked"] = picked
    return picked


def manage_run(runs: pd.DataFrame) -> None:
    """Rename, tag, annotate or delete one run; deleting asks for confirmation. Off in read-only mode."""
    if refused_in_read_only("Renaming, tagging and deleting runs"):
        return
    labels = run_labels(runs)
    options = list(runs["run"])
    default = st.session_state.get("selected_runs", options[-1:])
    index = options.index(default[0]) if default and default[0] in options else len(options) - 1
    run = st.selectbox("Run", options, index=index, format_func=lambda r: f"{labels[r]} — {r}", key="manage_run")
    meta = runs.set_index("run").loc[run]
    store = dx.RunStore(store_root())
    name = st.text_input("Name", value=meta["name"], key=f"name_{run}")
    tags = st.text_input("Tags (comma-separated)", value=meta["tags"], key=f"tags_{run}")
    notes = st.text_area("Notes", value=meta["notes"] or "", key=f"notes_{run}")
    if st.button("Save name, tags and notes", key=f"save_{run}"):
        try:
            store.rename(run, name)
            store.set_tags(run, tags.split(","))
            store.set_notes(run, notes)
            st.rerun()
        except dx.DiagnosticsError as exc:
            st.error(str(exc))
    running = meta["status"] == "running"
    confirm = st.checkbox(f"Yes, delete run '{markdown_text(meta['name'])}' (to the trash)", key=f"confirm_{run}",
                          disabled=running, help="A run that is still being written cannot be deleted.")
    if st.button("Delete run", type="primary", disabled=not confirm or running, key=f"delete_{run}"):
        try:
            store.delete(run)
            st.session_state["selected_runs"] = []
            st.rerun()
        except (dx.DiagnosticsError, OSError) as exc:
            st.error(f"Could not delete: {exc}")
    if running:
        st.caption("This run is still being written; stop its training to delete it.")


def trash_section() -> None:
    """Deleted runs, restorable until the trash is emptied (shown only when the trash holds any; never when
    read-only)."""
    if read_only():
        return
    store = dx.RunStore(store_root())
    trashed = store.trashed()
    if trashed.empty:
        return
    with st.expander(f"Deleted runs ({len(trashed)}): restore, or empty the trash"):
        labels = {r.run: f"{one_line(r.name)} — {r.run} (deleted {r.deleted:%Y-%m-%d %H:%M})"
                  for r in trashed.itertuples()}
        run = st.selectbox("Deleted run", list(labels), format_func=labels.get, key="trash_run")
        if st.button("Restore run", key="trash_restore"):
            try:
                store.restore(run)
                st.rerun()
            except (dx.DiagnosticsError, OSError) as exc:
                st.error(f"Could not restore: {markdown_text(exc, 500)}")
        confirm = st.checkbox(f"Yes, delete the {len(trashed)} run(s) in the trash for good", key="trash_confirm")
        if st.button("Empty trash", disabled=not confirm, key="trash_empty"):
            store.empty_trash()
            st.rerun()
