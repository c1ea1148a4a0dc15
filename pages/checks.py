"""Gradient checks: one layer's hand-written backward pass against autograd and finite differences."""

import streamlit as st

from diagnostics.views.checks import (CONV_OUTPUT_SIZE, LAYERS, TRANSPOSE_OUTPUT_SIZE, LayerOptionsError, build_layer,
                                     conv_output_table, formulas, selector_sizes)
from diagnostics.views.figures import gradient_figure
from diagnostics.manual import IMPLS
from ui.checks import cached_check, cached_duality, input_shape_widgets, layer_options
from ui.common import require_router

require_router()
st.title("Gradient checks")
st.markdown("Pick a layer and its options: its backward pass, written by hand from the formulas below, is "
            "compared with autograd and with central finite differences, in float64.")

c1, c2, c3 = st.columns([2, 2, 1])
layer = c1.selectbox("Layer type", list(LAYERS), format_func=lambda k: LAYERS[k].name, key="chk_layer")
impl = c2.radio("Implementation", IMPLS, horizontal=True, key="chk_impl",
                help="fast: vectorised (unfold, transposed convolution, scatter); reference: explicit loops.")
seed = int(c3.number_input("Seed", 0, 2**31 - 1, 0, key="chk_seed"))
spec = LAYERS[layer]

st.subheader("Input")
shape = input_shape_widgets(layer)
with st.expander(f"{spec.name} options", expanded=True):
    options = layer_options(layer, shape[1])

try:
    module = build_layer(layer, options, shape[1], seed)
    result = cached_check(layer, options, shape, impl, seed)
except LayerOptionsError as err:
    st.error(f"This combination does not work. {err}", icon=":material/block:")
    st.stop()

shape_text = " × ".join(map(str, result.input_shape))
st.markdown(f"`{result.module}` maps an input of shape **{shape_text}** to "
            f"**{' × '.join(map(str, result.output_shape))}**.")

st.subheader("Formulas")
for what, latex in formulas(layer, module):
    st.markdown(f"**{what}**")
    st.latex(latex)

st.subheader("Errors: manual rule vs autograd vs finite differences")
counts = result.report["status"].value_counts().to_dict()
summary = ", ".join(f"{n} {status}" for status, n in counts.items())
if result.passed:
    st.success(f"Every comparison agrees ({summary}).", icon=":material/check_circle:")
else:
    st.error(f"Some comparisons fail ({summary}).", icon=":material/error:")
st.dataframe(result.report.drop(columns=["module"]), hide_index=True, width="stretch",
             column_config={"max_abs_err": st.column_config.NumberColumn(format="%.2e"),
                            "max_rel_err": st.column_config.NumberColumn(format="%.2e")})
st.caption("max_rel_err = max |manual − reference| / max |reference| (with a floor of 1e-3 of the layer's largest "
           "gradient). Pass: ≤ 1e-10 against autograd, ≤ 1e-6 against finite differences (which sample at most "
           "64 coordinates per tensor).")

st.subheader("Heatmaps")
if result.manual["input"].size == 0:
    st.info("The batch is empty (N = 0): the gradients have no elements to draw.")
else:
    grad_input = result.manual["input"]
    first = second = 0
    sizes = selector_sizes(grad_input.shape)
    if sizes:
        h1, h2 = st.columns(2)
        first = int(h1.number_input("Sample n", 0, sizes[0] - 1, 0, key="chk_sample"))
        second = int(h2.number_input("Channel c", 0, sizes[1] - 1, 0, key="chk_channel"))
    where = f" (sample {first}, channel {second})" if sizes else ""
    st.plotly_chart(gradient_figure(grad_input, result.autograd["input"], f"∂L/∂X{where}", "input", first, second),
                    key="chk_fig_input")
if "weight" in result.manual:
    grad_weight = result.manual["weight"]
    first = second = 0
    sizes = selector_sizes(grad_weight.shape)
    if sizes:
        transposed = spec.family == "conv_transpose"
        names = ("Input channel", "Output channel (in its group)") if transposed else \
            ("Output channel", "Input channel (in its group)")
        w1, w2 = st.columns(2)
        first = int(w1.number_input(names[0], 0, sizes[0] - 1, 0, key="chk_weight_first"))
        second = int(w2.number_input(names[1], 0, sizes[1] - 1, 0, key="chk_weight_second"))
    where = f" (kernel [{first}, {second}])" if sizes else ""
    st.plotly_chart(gradient_figure(grad_weight, result.autograd["weight"], f"∂L/∂W{where}", "weight", first,
                                    second), key="chk_fig_weight")
st.caption("Manual and autograd share one colour scale; the difference has its own. Both are symmetric around "
           "zero (white): red positive, blue negative.")

if spec.family in ("conv", "conv_transpose"):
    st.subheader("Shape arithmetic and the transposed convolution")
    if spec.family == "conv":
        st.markdown("The convolution's output size, per spatial dimension:")
        st.latex(CONV_OUTPUT_SIZE)
        st.dataframe(conv_output_table(module, shape), hide_index=True)
        st.markdown("A transposed convolution with the same weight maps the downsampled map back to the input's "
                    "shape; `output_padding` restores the rows the stride skipped, "
                    "(H_p − d(k−1) − 1) mod s:")
    else:
        st.markdown("A transposed convolution maps a downsampled map back up:")
    st.latex(TRANSPOSE_OUTPUT_SIZE)
    try:
        duality = cached_duality(layer, options, shape, seed)
    except LayerOptionsError as err:
        st.error(f"The duality check cannot run: {err}")
        st.stop()
    st.dataframe(duality.table, hide_index=True)
    st.markdown(f"`{duality.transpose}`")
    d1, d2 = st.columns(2)
    d1.metric("max |difference|", f"{duality.max_abs_diff:.2e}")
    d2.metric("relative to max |gradient|", f"{duality.max_rel_diff:.2e}")
    st.caption(duality.statement + ": its forward pass is the convolution's input-gradient.")
