"""Gradient flow: which layers get too little or too much gradient, since when, and across runs."""

import streamlit as st

from diagnostics.views.figures import label, run_colors
from diagnostics.views.matrices import FLOW_STATISTICS, layers_with_values
from diagnostics.views.gradient_flow import FlowOptions, default_trend_layers, gradient_flow_view
from ui.common import StreamlitLoader, guard, load_runs, pick_runs, require_router, run_labels, store_root
from ui.flow import export_section, show_findings, threshold_inputs

require_router()
st.title("Gradient flow")
runs = load_runs()
if runs.empty:
    st.info("No runs yet. Record one from your training script (see the Runs page), then come back here.")
    st.stop()

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
    with guard(f"read run {names[chosen[0]]}") as read:
        first = loader.stat_matrix(chosen[0], stat)
    if read.failed:
        return
    if first.empty:
        st.info(f"Run {names[chosen[0]]} has no recorded steps yet" + (" (it is still starting)." if running else "."))
        return
    if running:
        st.caption("A selected run is still being written: this section refreshes every 3 s.")
    missing = [names[r] for r in chosen if not layers_with_values(loader.stat_matrix(r, stat))]
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
    heat_run = st.selectbox("Run for heatmaps, trends", chosen, format_func=names.get, key="flow_heat") \
        if len(chosen) > 1 else chosen[0]
    heat = loader.stat_matrix(heat_run, stat)
    layers = list(heat.layers)
    default = default_trend_layers(layers_with_values(heat) or layers)

    # Containers in page order; the widgets inside them are read before the (single) view is built.
    boxes = {name: st.container() for name in ("findings", "depth", "heat", "trends", "hist", "export")}
    with boxes["trends"]:
        st.subheader("Trends over steps")
        picked = st.multiselect("Layers", layers, default=default, key="flow_layers")
    with boxes["hist"]:
        st.subheader("Distribution over time")
        h1, h2 = st.columns([3, 1])
        hist_layer = h1.selectbox("Layer", layers, key="flow_hist_layer")
        kind = h2.radio("Gradient of", ["weight_grad", "act_grad"], key="flow_hist_kind",
                        format_func={"weight_grad": "weights", "act_grad": "outputs"}.get)
    options = FlowOptions(chosen, stat, log, step, extra, heat_run, picked, hist_layer, kind,
                          thresholds=thresholds)
    with guard("build the charts") as built:
        view = gradient_flow_view(loader, options, colors, names)
    if built.failed:
        return

    with boxes["findings"]:
        st.subheader("Findings")
        show_findings(view, names)
    boxes["depth"].plotly_chart(view.figures["depth"], key="fig_depth")
    with boxes["heat"]:
        st.subheader("Layer × step")
        tab_w, tab_a = st.tabs(["weight gradients", "activation gradients"])
        tab_w.plotly_chart(view.figures["heat_weight"], key="fig_heat_w")
        tab_a.plotly_chart(view.figures["heat_act"], key="fig_heat_a")
    for key in ("trends", "ratio", "loss_norm"):
        boxes["trends"].plotly_chart(view.figures[key], key=f"fig_{key}")
    if "histogram" in view.figures:
        boxes["hist"].plotly_chart(view.figures["histogram"], key="fig_hist")
        boxes["hist"].plotly_chart(view.figures["quantiles"], key="fig_quant")
    with boxes["export"]:
        st.subheader("Export")
        export_section(view, store_root(), chosen, names, stat)


body()
