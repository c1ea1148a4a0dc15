"""Gradient checks: one layer's hand-written backward pass against autograd and finite differences."""

import streamlit as st

from diagnostics.errors import LayerOptionsError
from diagnostics.manual import IMPLS
from diagnostics.manual.duality import CONV_OUTPUT_SIZE, TRANSPOSE_OUTPUT_SIZE
from diagnostics.views.catalogue import LAYERS
from ui.checks import cached_check_view, gradient_heatmap, input_shape_widgets, layer_options
from ui.common import guard, require_router

require_router()
st.title("Gradient checks")
st.markdown("Pick a layer and its options: its backward pass, written by hand from the formulas below, is "
            "compared with autograd and with central finite differences, in float64.")

c1, c2, c3 = st.columns([2, 2, 1])
layer = c1.selectbox("Layer type", list(LAYERS), format_func=lambda k: LAYERS[k].name, key="chk_layer")
impl = c2.radio("Implementation", IMPLS, horizontal=True, key="chk_impl",
                help="fast: vectorised (unfold, transposed convolution, scatter); reference: explicit loops.")
seed = int(c3.number_input("Seed", 0, 2**31 - 1, 0, key="chk_seed"))
st.subheader("Input")
shape = input_shape_widgets(layer)
with st.expander(f"{LAYERS[layer].name} options", expanded=True):
    options = layer_options(layer, shape[1])
with guard("run the check", LayerOptionsError, "This combination does not work.") as check:
    view = cached_check_view(layer, options, shape, impl, seed)
if check.failed:
    st.stop()

result = view.result
st.markdown(f"`{result.module}` maps an input of shape **{' × '.join(map(str, result.input_shape))}** to "
            f"**{' × '.join(map(str, result.output_shape))}**.")
st.subheader("Formulas")
for what, latex in view.formulas:
    st.markdown(f"**{what}**")
    st.latex(latex)

st.subheader("Errors: manual rule vs autograd vs finite differences")
if result.passed:
    st.success(f"Every comparison agrees ({view.summary}).", icon=":material/check_circle:")
else:
    st.error(f"Some comparisons fail ({view.summary}).", icon=":material/error:")
st.dataframe(result.report.drop(columns=["module"]), hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.2e") for c in ("max_abs_err", "max_rel_err")})
st.caption("max_rel_err = max |manual − reference| / max |reference| (with a floor of 1e-3 of the layer's largest "
           "gradient). Pass: ≤ 1e-10 against autograd, ≤ 1e-6 against finite differences (which sample at most "
           "64 coordinates per tensor).")

st.subheader("Heatmaps")
if result.manual["input"].size == 0:
    st.info("The batch is empty (N = 0): the gradients have no elements to draw.")
else:
    gradient_heatmap(view, "input")
if "weight" in result.manual:
    gradient_heatmap(view, "weight")
st.caption("Manual and autograd share one colour scale; the difference has its own. Both are symmetric around "
           "zero (white): red positive, blue negative.")

if view.family in ("conv", "conv_transpose"):
    st.subheader("Shape arithmetic and the transposed convolution")
    if view.output_table is not None:
        st.markdown("The convolution's output size, per spatial dimension:")
        st.latex(CONV_OUTPUT_SIZE)
        st.dataframe(view.output_table, hide_index=True)
        st.markdown("A transposed convolution with the same weight maps the downsampled map back to the input's "
                    "shape; `output_padding` restores the rows the stride skipped, (H_p − d(k−1) − 1) mod s:")
    else:
        st.markdown("A transposed convolution maps a downsampled map back up:")
    st.latex(TRANSPOSE_OUTPUT_SIZE)
    if view.duality is None:
        st.error(f"The duality check cannot run: {view.duality_error}")
        st.stop()
    st.dataframe(view.duality.table, hide_index=True)
    st.markdown(f"`{view.duality.transpose}`")
    d1, d2 = st.columns(2)
    d1.metric("max |difference|", f"{view.duality.max_abs_diff:.2e}")
    d2.metric("relative to max |gradient|", f"{view.duality.max_rel_diff:.2e}")
    st.caption(view.duality.statement + ": its forward pass is the convolution's input-gradient.")
