"""Compare training: plain, batch-norm and residual CNNs under identical conditions, gradient flow side by side."""

import streamlit as st

from diagnostics.views import compare_figures as plots
from diagnostics.experiments.comparison import describe, first_last_ratio, summarize
from ui.common import require_router, show_error, store_root
from ui.compare import GROUP_KEY, JOB_KEY, comparison_data, past_comparisons, progress_panel, settings_form, start_job

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
elif job is not None and job.error:
    st.error(f"The comparison stopped: {job.error}")
elif job is not None and st.session_state.get("_compare_shown") != job.group:
    st.session_state["_compare_shown"] = st.session_state[GROUP_KEY] = job.group   # open the new result once

st.subheader("Results")
try:
    past = past_comparisons(root)
except Exception as exc:  # noqa: BLE001 - an unreadable store must not break the page
    show_error(exc, f"read the comparisons in {root}")
    st.stop()
if past.empty:
    st.info(f"No comparisons in `{root}` yet: choose settings above and press Start.")
    st.stop()
groups = list(past["group"])
labels = {r.group: f"{r.created:%Y-%m-%d %H:%M} · {r.variants} · depth {r.depth} · {r.dataset} · {r.steps} steps"
          for r in past.itertuples()}
if st.session_state.get(GROUP_KEY) not in groups:
    st.session_state[GROUP_KEY] = groups[0]
group = st.selectbox("Comparison", groups, format_func=labels.get, key=GROUP_KEY,
                     help="Every comparison in the store, newest first; its runs share this group id.")
try:
    data = comparison_data(root, group)
except Exception as exc:  # noqa: BLE001
    show_error(exc, f"read comparison {group}")
    st.stop()
if data.steps.empty:
    st.info("This comparison has no recorded steps yet.")
    st.stop()

summary = summarize(data)
num_classes = next(iter(data.meta.values())).get("config", {}).get("num_classes", 10)
st.markdown(describe(summary, num_classes))

left, right = st.columns(2)
left.plotly_chart(plots.loss_figure(data.steps), theme="streamlit", key="cmp_loss")
right.plotly_chart(plots.accuracy_figure(data.steps), theme="streamlit", key="cmp_accuracy")

recorded = sorted(data.layers["step"].unique().tolist())
chosen = st.multiselect("Steps shown in gradient vs depth", recorded, default=plots.profile_steps(recorded),
                        key=f"cmp_steps_{group}")
stat = st.radio("Gradient", ["weight_grad_norm", "act_grad_norm"], horizontal=True, key="cmp_stat",
                format_func={"weight_grad_norm": "of the weights ‖∂L/∂W‖",
                             "act_grad_norm": "of the layer outputs ‖∂L/∂Y‖"}.get)
left, right = st.columns(2)
left.plotly_chart(plots.depth_figure(data.layers, chosen, stat), theme="streamlit", key="cmp_depth_fig")
right.plotly_chart(plots.ratio_figure(data.layers), theme="streamlit", key="cmp_ratio")

table = summary.rename(columns={"final_loss": "final loss (last 10 steps)", "accuracy": "held-out accuracy",
                                "ratio_median": "first/last ratio (median)", "ratio_final": "first/last ratio (last)"})
st.dataframe(table, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.2e") for c in table.columns if "ratio" in c})
ratios = first_last_ratio(data.layers)
st.download_button("Download the first/last ratios (CSV)", ratios.to_csv(index=False), f"{group}-ratios.csv",
                   mime="text/csv", key="cmp_download_ratios")
st.caption("Each run is also listed on the Runs page and opens on the Gradient flow and Kernel heatmaps pages. "
           "From a terminal: `python -m diagnostics compare --variants plain,residual --depth 20`.")
