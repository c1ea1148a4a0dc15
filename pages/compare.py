"""Compare training: plain, batch-norm and residual CNNs under identical conditions, gradient flow side by side."""

import streamlit as st

from diagnostics.views.training_comparison import DEPTH_STATS, compare_view, profile_steps, recorded_steps
from ui.common import guard, require_router, store_root
from ui.compare import (GROUP_KEY, JOB_KEY, comparison_data, past_comparisons, progress_panel, settings_form,
                        show_job_error, start_job)

require_router()
st.title("Compare training")
st.markdown(
    "Why do deep plain CNNs stop learning, and how do residual connections and batch norm fix it? Train up to four "
    "variants of one CNN with the same data, data order, seed, depth and optimiser, record their gradient flow, "
    "and see the result side by side. The defaults (depth 20, ReLU, PyTorch's init, 300 steps on the bundled "
    "digits) take well under a minute on a laptop CPU.")
root = store_root()

job = st.session_state.get(JOB_KEY)
settings = settings_form(running=job is not None and not job.finished)
if settings is not None:
    start_job(root, settings)
    job = st.session_state.get(JOB_KEY)
if job is not None and not job.finished:
    st.subheader("Training")
    st.caption(f"Comparison `{job.group}` trains in the background; you can keep using the dashboard.")
    progress_panel(job)
elif job is not None and job.exception is not None:
    show_job_error(job)
elif job is not None and st.session_state.get("_compare_shown") != job.group:
    st.session_state["_compare_shown"] = st.session_state[GROUP_KEY] = job.group   # open the new result once

st.subheader("Results")
with guard(f"read the comparisons in {root}") as read:
    past = past_comparisons(root)
if read.failed:
    st.stop()
if past.empty:
    st.info(f"No comparisons in `{root}` yet: choose settings above and press Start.")
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

reading, curves = st.container(), st.columns(2)
recorded = recorded_steps(data)
steps = st.multiselect("Steps shown in gradient vs depth", recorded, default=profile_steps(recorded),
                       key=f"cmp_steps_{group}")
with guard(f"draw comparison {group}") as drawn:
    view = compare_view(data, stat, steps)
if drawn.failed:
    st.stop()
reading.markdown(view.reading)
curves[0].plotly_chart(view.figures["loss"], theme="streamlit", key="cmp_loss")
curves[1].plotly_chart(view.figures["accuracy"], theme="streamlit", key="cmp_accuracy")
left, right = st.columns(2)
left.plotly_chart(view.figures["depth"], theme="streamlit", key="cmp_depth_fig")
right.plotly_chart(view.figures["ratio"], theme="streamlit", key="cmp_ratio")
table = view.summary.rename(columns={"final_loss": "final loss (last 10 steps)", "accuracy": "held-out accuracy",
                                     "ratio_median": "first/last ratio (median)",
                                     "ratio_final": "first/last ratio (last)"})
st.dataframe(table, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.2e") for c in table.columns if "ratio" in c})
st.download_button("Download the first/last ratios (CSV)", view.ratios.to_csv(index=False), f"{group}-ratios.csv",
                   mime="text/csv", key="cmp_download_ratios")
st.caption("Each run is also listed on the Runs page and opens on the Gradient flow and Kernel heatmaps pages. "
           "From a terminal: `python -m diagnostics compare --variants plain,residual --depth 20`.")
