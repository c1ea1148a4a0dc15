"""Pieces of the Gradient flow page: thresholds, the layer pickers, the findings, the charts and the export."""

from __future__ import annotations

import streamlit as st

import diagnostics as dx
from diagnostics.views.diagnosis import Thresholds
from diagnostics.views.export import table_bytes, tensorboard_zip
from diagnostics.views.gradient_flow import FlowView, flow_report
from diagnostics.views.text import markdown_text

SEVERITY = {"problem": st.error, "warning": st.warning, "info": st.info}


def threshold_inputs() -> Thresholds:
    """The findings' thresholds, visible and adjustable in the sidebar (defaults: measured on the benchmark)."""
    t = Thresholds()
    with st.sidebar.expander("Finding thresholds", expanded=False):
        t.dead_units = st.slider("Dead units: share of a layer's units never active above", 0.05, 1.0, t.dead_units,
                                 0.05, key="flow_t_dead_units")
        t.dead_zero_frac = st.slider("... without the per-unit statistic: zero outputs more often than", 0.5, 1.0,
                                     t.dead_zero_frac, 0.01, key="flow_t_dead_zero_frac")
        low, high = st.select_slider("Healthy update ratio ‖ΔW‖/‖W‖", options=[10.0 ** k for k in range(-7, 1)],
                                     value=(t.update_low, t.update_high), format_func=lambda v: f"{v:.0e}",
                                     key="flow_t_updates")
        t.update_low, t.update_high = float(low), float(high)
        t.vanishing_ratio = st.number_input("Vanishing: first/last layer ‖∂L/∂Y‖ below", value=t.vanishing_ratio,
                                            format="%.0e", min_value=1e-30, max_value=1.0, key="flow_t_vanishing")
        t.exploding_ratio = st.number_input("Exploding across depth: first/last above", value=t.exploding_ratio,
                                            format="%.0e", min_value=1.0, key="flow_t_exploding")
        t.divergence_growth = st.number_input("Diverged: total norm grew more than (×)", value=t.divergence_growth,
                                              format="%.0e", min_value=1.0, key="flow_t_divergence")
        t.grad_to_weight = st.number_input("Exploding: ‖∂L/∂W‖/‖W‖ of a layer above", value=t.grad_to_weight,
                                           format="%.0e", min_value=1e-3, key="flow_t_grad_to_weight")
        t.window = int(st.number_input("Window (recorded steps)", value=t.window, min_value=1, step=1,
                                       key="flow_t_window"))
        t.persist = st.slider("... a lasting condition holds on at least", 0.5, 1.0, t.persist, 0.05,
                              key="flow_t_persist")
    return t


def show_findings(view: FlowView, names: dict[str, str]) -> None:
    """Per run, one box per finding (most severe first) with its fix; a success box for runs without any."""
    for run in view.runs_in_order():
        label = markdown_text(names.get(run, run))
        if run in view.finding_errors:
            st.error(f"The findings of run {label} could not be computed:")
            st.exception(view.finding_errors[run])
            continue
        findings = view.findings.get(run, [])
        if not any(f.severity != "info" for f in findings):
            st.success(f"{label}: no problems found with the current thresholds.")
        for finding in findings:
            # A finding names runs and layers, which are data: shown literally, never as Markdown.
            SEVERITY[finding.severity](markdown_text(finding.text, limit=10_000))


def export_section(view: FlowView, root: str, runs: list[str], names: dict[str, str], stat: str) -> None:
    """Download the shown data (CSV / Parquet), a TensorBoard export and a self-contained HTML report."""
    c1, c2, c3, c4 = st.columns(4)
    fmt = c1.radio("Shown data as", ["CSV", "Parquet"], horizontal=True, key="flow_data_format")
    if c2.button("Prepare the shown data", width="stretch"):
        ext = {"CSV": "csv", "Parquet": "parquet"}[fmt]
        mime = "text/csv" if ext == "csv" else "application/octet-stream"
        st.session_state["flow_data"] = (f"{stat}.{ext}", table_bytes(view.data(), ext), mime)
    if "flow_data" in st.session_state:
        name, payload, mime = st.session_state["flow_data"]
        c2.download_button(f"Download {name}", payload, name, mime, width="stretch")
    run = runs[0]
    store = dx.RunStore(root)
    if c3.button(f"Prepare TensorBoard export of {markdown_text(names.get(run, run))}", width="stretch"):
        st.session_state["tb_zip"] = (run, tensorboard_zip(store, run))
    if c4.button("Prepare HTML report", width="stretch"):
        st.session_state["html_report"] = (run, flow_report(view, store, runs, names, stat).encode())
    if st.session_state.get("tb_zip", (None,))[0] == run:
        c3.download_button("Download TensorBoard (.zip)", st.session_state["tb_zip"][1], f"{run}-tensorboard.zip",
                           "application/zip", width="stretch")
    if st.session_state.get("html_report", (None,))[0] == run:
        c4.download_button("Download HTML report", st.session_state["html_report"][1], f"{run}-report.html",
                           "text/html", width="stretch")


def page_sections() -> dict:
    """The page's sections as containers, in page order (filled after the view is built)."""
    return {name: st.container() for name in ("findings", "depth", "gains", "heat", "trends", "hist", "export")}


def layer_pickers(boxes: dict, layers: list[str], default: list[str]) -> tuple[list[str], str | None, str]:
    """The trend layers, the histogram layer and the gradient it shows, each in its section."""
    with boxes["trends"]:
        st.subheader("Trends over steps")
        picked = st.multiselect("Layers", layers, default=default, key="flow_layers")
    with boxes["hist"]:
        st.subheader("Distribution over time")
        h1, h2 = st.columns([3, 1])
        hist_layer = h1.selectbox("Layer", layers, key="flow_hist_layer")
        kind = h2.radio("Gradient of", ["weight_grad", "act_grad"], key="flow_hist_kind",
                        format_func={"weight_grad": "weights", "act_grad": "outputs"}.get)
    return picked, hist_layer, kind


def show_flow(view: FlowView, boxes: dict, root: str, runs: list[str], names: dict[str, str], stat: str) -> None:
    """Every finding and chart of the view in its section, then the export."""
    with boxes["findings"]:
        st.subheader("Findings")
        show_findings(view, names)
    bucketed = [names.get(run, run) for run, m in view.matrices.items() if m.bucketed]
    if bucketed:
        boxes["depth"].caption(markdown_text(
            f"Too many layer-steps to hold every step in {', '.join(bucketed)}: neighbouring steps are averaged "
            "(each step shown is the first of a bucket, and the findings judge the averaged steps)."))
    boxes["depth"].plotly_chart(view.figures["depth"], key="fig_depth")
    with boxes["gains"]:
        st.subheader("Backward gain per block")
        st.caption("A block's gain is ‖∂L/∂x‖ / ‖∂L/∂y‖: how much the gradient grows or shrinks crossing it, at "
                   "the step(s) above. The cumulative product from the last block back says how much of the "
                   "gradient at the top still reaches each block.")
        if view.block_note:
            st.info(view.block_note)
        if "gain" in view.figures:
            left, right = st.columns(2)
            left.plotly_chart(view.figures["gain"], key="fig_gain")
            right.plotly_chart(view.figures["cumulative"], key="fig_cumulative")
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
        export_section(view, root, runs, names, stat)
