"""Compare training: plain, batch-norm and residual CNNs under identical conditions, gradient flow side by side."""

import streamlit as st

from diagnostics.views.training_comparison import DEPTH_STATS, compare_view, profile_steps, recorded_steps
from ui.access import read_only, refused_in_read_only
from ui.common import guard, require_router, store_root
from ui.compare import (GROUP_KEY, comparison_data, current_job, is_running, past_comparisons, preset_picker,
                        progress_panel, settings_form, show_job_error, show_view, start_job)

require_router()
st.title("Compare training")
st.markdown(
    "Why do deep plain CNNs stop learning, and how do residual connections and batch norm fix it? Train up to four "
    "variants of one CNN with the same data, data order, seed, depth and optimiser, record their gradient flow, "
    "and see the result side by side, with the backward gain of every block. The defaults (depth 20, ReLU, "
    "PyTorch's init, 300 steps on the bundled digits) take well under a minute on a laptop CPU.")
root = store_root()

job, ticket = current_job()
running = is_running(job, ticket)
settings = None
if not refused_in_read_only("Training"):
    preset, settings = preset_picker(running), settings_form(running)
    settings = preset or settings
if settings is not None:
    start_job(root, settings)
    job, ticket = current_job()
if is_running(job, ticket):
    st.subheader("Training")
    progress_panel(job, ticket)
elif job is not None and (job.exception is not None or job.cancelled or (ticket and ticket.state == "cancelled")):
    show_job_error(job, ticket)
elif job is not None and st.session_state.get("_compare_shown") != job.group:
    st.session_state["_compare_shown"] = st.session_state[GROUP_KEY] = job.group   # open the new result once

st.subheader("Results")
with guard(f"read the comparisons in {root}") as read:
    past = past_comparisons(root)
if read.failed:
    st.stop()
if past.empty:
    st.info(f"No comparisons in `{root}` yet" + ("." if read_only() else ": choose settings above and press Start."))
    st.stop()
labels = {r.group: f"{r.created:%Y-%m-%d %H:%M} · {r.variants} · depth {r.depth} · {r.dataset} · {r.steps} steps"
          for r in past.itertuples()}
if st.session_state.get(GROUP_KEY) not in labels:
    st.session_state[GROUP_KEY] = next(iter(labels))
group = st.selectbox("Comparison", list(labels), format_func=labels.get, key=GROUP_KEY,
                     help="Every comparison in the store, newest first; its runs share this group id.")
stat = st.radio("Gradient in gradient vs depth", DEPTH_STATS, horizontal=True, key="cmp_stat",
                format_func={"weight_grad_norm": "of the weights ‖∂L/∂W‖",
                             "act_grad_norm": "of the layer outputs ‖∂L/∂Y‖"}.get)
with guard(f"read comparison {group}") as read:
    data = comparison_data(root, group)
if read.failed:
    st.stop()
if data.steps.empty:
    st.info("This comparison has no recorded steps yet.")
    st.stop()

recorded = recorded_steps(data)
steps = st.multiselect("Steps shown in gradient vs depth", recorded, default=profile_steps(recorded),
                       key=f"cmp_steps_{group}")
with guard(f"draw comparison {group}") as drawn:
    view = compare_view(data, stat, steps)
if drawn.failed:
    st.stop()
show_view(view, group)
st.caption("Each run is also listed on the Runs page and opens on the Gradient flow and Kernel heatmaps pages. "
           "From a terminal: `python -m diagnostics compare --variants plain,residual --depth 20`.")
