"""Kernel heatmaps: ∂L/∂W, W and ΔW of one conv layer at a recorded step, one k×k tile per channel pair."""

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from diagnostics.views.kernels import kernel_page, page_count
from diagnostics.views.figures import kernel_grid_figure
from ui.common import (kernel_snapshot, kernel_steps, load_runs, pick_runs, require_router, run_signature,
                       show_error, store_root)

require_router()
st.title("Kernel heatmaps")
runs = load_runs()
if runs.empty:
    st.info("No runs yet. Record one from your training script (see the Runs page), then come back here.")
    st.stop()
root = store_root()
with_kernels = [r for r in runs["run"] if (Path(root).expanduser() / r / "kernels").is_dir()]
run = pick_runs(runs, "kernel_run", multi=False, label="Run", fallback=with_kernels[-1:])[0]
try:
    steps = kernel_steps(root, run)
except Exception as exc:  # noqa: BLE001 - an unreadable run must not break the page
    show_error(exc, f"read run {run}")
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
try:
    snapshot = kernel_snapshot(root, run, step, run_signature(root, run))
except Exception as exc:  # noqa: BLE001
    show_error(exc, f"load the kernels of step {step}")
    st.stop()
layer = c2.selectbox("Conv layer", list(snapshot.arrays), key="kernel_layer")
arrays = snapshot.arrays[layer]
grad = arrays["grad"]
st.markdown(f"Weight shape **{' × '.join(map(str, grad.shape))}** (output channels × input channels × kernel). "
            "The weight gradient is the cross-correlation of the layer's input with the gradient of its output:")
st.latex(r"\frac{\partial L}{\partial W_{k,c,u,v}} = \sum_{n,i,j} X_{n,\,c,\; s i + d u - p,\; s j + d v - p}"
         r"\;\frac{\partial L}{\partial Y_{n,k,i,j}} \qquad\text{i.e.}\qquad"
         r"\frac{\partial L}{\partial W} = X \star \frac{\partial L}{\partial Y}")

p1, p2, p3 = st.columns(3)
per_page = p3.select_slider("Channels per page", [4, 8, 16, 32], value=16, key="kernel_per_page")
out_pages = page_count(grad.shape[0], per_page)
in_pages = page_count(grad.shape[1], per_page)
out_page = p1.number_input(f"Output-channel page (of {out_pages})", 1, out_pages, 1, key="kernel_out_page") - 1
in_page = p2.number_input(f"Input-channel page (of {in_pages})", 1, in_pages, 1, key="kernel_in_page") - 1
page = kernel_page(arrays, out_page, in_page, per_page, per_page)
st.caption("Channels are ordered by the size of their gradient, largest first; the colour scale is symmetric "
           "around zero and shared by every tile of the layer (on every page).")

titles = {"grad": "∂L/∂W (weight gradient)", "weight": "W (weights)", "update": "ΔW (update of the optimizer step)"}
tabs = st.tabs([titles[k] for k in titles if k in arrays])
for tab, kind in zip(tabs, [k for k in titles if k in arrays]):
    zmax = float(np.nanmax(np.abs(arrays[kind]))) if arrays[kind].size else 1.0
    fig = kernel_grid_figure(page.arrays[kind], f"{titles[kind]} — {layer}, step {step}", zmax,
                             page.out_channels, page.in_channels)
    tab.plotly_chart(fig, key=f"kernel_fig_{kind}")
if "update" not in arrays:
    st.caption("No ΔW: pass `optimizer=` to the monitor to record the update.")

st.subheader("One tile's numbers")
t1, t2 = st.columns(2)
out_c = t1.selectbox("Output channel", page.out_channels.tolist(), key="kernel_tile_out")
in_c = t2.selectbox("Input channel", page.in_channels.tolist(), key="kernel_tile_in")
for column, kind in zip(st.columns(len(tabs)), [k for k in titles if k in arrays]):
    tile = np.atleast_2d(arrays[kind][out_c, in_c])
    column.caption(titles[kind])
    column.dataframe(pd.DataFrame(tile).style.format("{:.4g}"), width="stretch")
