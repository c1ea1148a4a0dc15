"""Gradient flow: which layers get too little or too much gradient, since when, and across runs."""

import streamlit as st

from diagnostics.views.figures import label, run_colors
from diagnostics.views.matrices import FLOW_STATISTICS, layers_with_values
from diagnostics.views.gradient_flow import FlowOptions, default_trend_layers, gradient_flow_view
from ui.common import StreamlitLoader, guard, pick_runs, require_router, run_labels, runs_or_stop, store_root
from ui.flow import layer_pickers, page_sections, show_flow, threshold_inputs

require_router()
st.title("Gradient flow")
runs = runs_or_stop()

c1, c2, c3 = st.columns([3, 2, 1])
with c1:
    chosen = pick_runs(runs, "flow_runs", label="Runs (overlaid)")
with c2:
    stat = st.selectbox("Statistic", FLOW_STATISTICS, format_func=label, key="flow_stat")
with c3:
    log = st.radio("Scale", ["log", "linear"], horizontal=True, key="flow_scale") == "log"
if not chosen:
    st.info("Pick at least one run.")
    st.stop()
thresholds = threshold_inputs()
running = runs.set_index("run").loc[chosen, "status"].eq("running").any()
names, colors = run_labels(runs), run_colors(list(runs["run"]))


@st.fragment(run_every=3.0 if running else None)
def body() -> None:
    loader = StreamlitLoader(store_root())
    readable = []                                     # one unreadable run is reported and the others still drawn
    for run in chosen:
        with guard(f"read run {names[run]}") as read:
            loader.stat_matrix(run, stat)
        readable += [] if read.failed else [run]
    if not readable:
        return
    first = loader.stat_matrix(readable[0], stat)
    if first.empty:
        st.info(f"Run {names[readable[0]]} has no recorded steps yet" + (" (it is still starting)." if running else "."))
        return
    if running:
        st.caption("A selected run is still being written: this section refreshes every 3 s.")
    missing = [names[r] for r in readable if not layers_with_values(loader.stat_matrix(r, stat))]
    if missing:
        st.info(f"No {label(stat)} in {', '.join(missing)}: not recorded (e.g. the monitor ran with "
                "`activations=False` or `weight_norms=False`). Choose another statistic.")
    steps = first.steps
    c1, c2 = st.columns([3, 1])
    if len(steps) > 1:
        step = c1.slider("Step (gradient vs depth)", int(steps[0]), int(steps[-1]), int(steps[-1]), key="flow_step")
    else:
        step = int(steps[0])
        c1.caption(f"This run has one recorded step ({step}); trends over steps need more.")
    extra = [int(steps[0])] if c2.checkbox("Also show the first step", key="flow_first") else []
    heat_run = st.selectbox("Run for heatmaps, trends", readable, format_func=names.get, key="flow_heat") \
        if len(readable) > 1 else readable[0]
    heat = loader.stat_matrix(heat_run, stat)
    layers = list(heat.layers)

    # Containers in page order; the widgets inside them are read before the (single) view is built.
    boxes = page_sections()
    picked, hist_layer, kind = layer_pickers(boxes, layers, default_trend_layers(layers_with_values(heat) or layers))
    options = FlowOptions(readable, stat, log, step, extra, heat_run, picked, hist_layer, kind,
                          thresholds=thresholds)
    with guard("build the charts") as built:
        view = gradient_flow_view(loader, options, colors, names)
    if built.failed:
        return

    show_flow(view, boxes, store_root(), readable, names, stat)


body()
