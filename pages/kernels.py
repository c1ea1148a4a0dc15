"""Kernel heatmaps: ∂L/∂W, W and ΔW of one conv layer at a recorded step, one k×k tile per channel pair."""

import streamlit as st

import diagnostics as dx
from diagnostics.views.kernels import KINDS, kernel_view, page_count
from ui.common import guard, kernel_snapshot, pick_runs, require_router, run_signature, runs_or_stop, store_root

require_router()
st.title("Kernel heatmaps")
runs = runs_or_stop()
root = store_root()
store = dx.RunStore(root)
with_kernels = [r for r in runs["run"] if store.has_kernels(r)]
run = pick_runs(runs, "kernel_run", multi=False, label="Run", fallback=with_kernels[-1:])[0]
with guard(f"read run {run}") as read:
    steps = store.kernel_steps(run)
if read.failed:
    st.stop()
if not steps:
    st.info("This run has no kernel snapshots. They are recorded for conv layers when the monitor is created "
            "with `kernels=\"auto\"` (first, middle and last conv layer) or `kernels=[\"layer.name\", ...]`; "
            "a model without conv layers has none.")
    st.stop()

c1, c2 = st.columns([3, 2])
step = c1.select_slider("Recorded step", steps, value=steps[-1], key="kernel_step") if len(steps) > 1 else steps[0]
if len(steps) == 1:
    c1.caption(f"One snapshot, at step {step}.")
with guard(f"load the kernels of step {step}") as read:
    snapshot = kernel_snapshot(root, run, step, run_signature(root, run))
if read.failed:
    st.stop()
layer = c2.selectbox("Conv layer", list(snapshot.arrays), key="kernel_layer")
arrays = snapshot.arrays[layer]
p1, p2, p3 = st.columns(3)
per_page = p3.select_slider("Channels per page", [4, 8, 16, 32], value=16, key="kernel_per_page")
out_pages, in_pages = page_count(arrays["grad"].shape[0], per_page), page_count(arrays["grad"].shape[1], per_page)
out_page = p1.number_input(f"Output-channel page (of {out_pages})", 1, out_pages, 1, key="kernel_out_page") - 1
in_page = p2.number_input(f"Input-channel page (of {in_pages})", 1, in_pages, 1, key="kernel_in_page") - 1
view = kernel_view(arrays, layer, step, per_page, out_page, in_page)

st.markdown(f"Weight shape **{' × '.join(map(str, view.shape))}** (output channels × input channels × kernel). "
            f"{view.formula.what}:")
st.latex(view.formula.latex)
st.caption("Channels are ordered by the size of their gradient, largest first; the colour scale is symmetric "
           "around zero and shared by every tile of the layer (on every page).")
tabs = st.tabs([KINDS[kind] for kind in view.figures])
for tab, (kind, fig) in zip(tabs, view.figures.items()):
    tab.plotly_chart(fig, key=f"kernel_fig_{kind}")
if "update" not in view.figures:
    st.caption("No ΔW: pass `optimizer=` to the monitor to record the update.")

st.subheader("One tile's numbers")
t1, t2 = st.columns(2)
out_c = t1.selectbox("Output channel", view.page.out_channels.tolist(), key="kernel_tile_out")
in_c = t2.selectbox("Input channel", view.page.in_channels.tolist(), key="kernel_tile_in")
for column, (kind, tile) in zip(st.columns(len(view.figures)), view.tiles(arrays, out_c, in_c).items()):
    column.caption(KINDS[kind])
    column.dataframe(tile.style.format("{:.4g}"), width="stretch")
