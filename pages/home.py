"""Runs: what the tool does, how to record a run, and every run in the store (select, rename, tag, delete)."""

import streamlit as st

from ui.common import load_runs, require_router, store_root
from ui.runs import manage_run, runs_table, trash_section

require_router()
st.title("Gradient Flow Diagnostics")
st.markdown(
    "See how gradients flow through your PyTorch model, layer by layer and step by step: which layers get too "
    "little gradient (vanishing) or too much (exploding), dead units, update sizes and the first NaN, recorded "
    "at near-zero cost from your own training loop.")

runs = load_runs()

with st.expander("Record a run from your own training script", expanded=runs.empty):
    st.code(
        """import diagnostics as dx

store = dx.RunStore("runs")   # the folder this dashboard reads
with dx.GradientMonitor(model, store=store, run_name="my-run", optimizer=optimizer,
                        histogram_every=10, kernels="auto") as mon:
    for x, y in loader:
        loss = loss_fn(model(x), y)
        loss.backward()
        mon.step(loss=loss, accuracy=acc)   # after backward, before optimizer.step()
        optimizer.step(); optimizer.zero_grad()""",
        language="python")
    st.caption("The dashboard reads runs while they are still being written. "
               "From a terminal: `python -m diagnostics runs --store runs`.")

st.subheader("Runs")
trash_section()
if runs.empty:
    st.info(f"No runs in `{store_root()}` yet. Run the snippet above in your training script, then reload "
            "this page, or pick another store folder in the sidebar.")
    st.stop()

picked = runs_table(runs)
st.caption(f"{len(runs)} run(s) in `{store_root()}`. Tick rows to compare them on the Gradient flow page"
           + (f" (selected: {len(picked)})." if picked else "."))
with st.expander("Rename, tag, annotate or delete a run"):
    manage_run(runs)
