"""Checkpoint: upload a checkpoint, see what it is, and probe its gradient flow — without writing code."""

import streamlit as st

import diagnostics as dx
from diagnostics.checkpoints.probe import folder_batch
from ui.checkpoint import batch_from_upload, load_sources, show_probes, show_recognition
from ui.common import require_router, store_root

require_router()
st.title("Checkpoint")
st.markdown("Upload one or more checkpoints (e.g. epoch 1 and epoch 50) to see their gradient flow side by side. "
            "Files are read with `torch.load(weights_only=True)` or as safetensors: **nothing in a file is ever "
            "run**; whole pickled models and TorchScript archives are refused.")
files = st.file_uploader("Checkpoint files (.pt, .pth, .ckpt, .bin, .safetensors)", accept_multiple_files=True,
                         key="ckpt_files")
path = st.text_input("…or a path on the machine running this app (for files over the upload limit)", key="ckpt_path")
loaded = load_sources(files, path)
if not loaded:
    if not files and not path:
        st.info("Drop a checkpoint above. Supported: a `state_dict`, a training checkpoint holding one (keys such as "
                "`state_dict`, `model`, `model_state_dict`; Lightning and DDP prefixes are removed), safetensors, "
                "and this project's own checkpoints. Architectures rebuilt: this project's CNNs and torchvision's "
                "resnet, vgg, densenet, mobilenet and efficientnet families.")
    st.stop()

for ckpt, rec in loaded:
    st.subheader(ckpt.source)
    show_recognition(ckpt, rec)

probeable = [(ckpt, rec) for ckpt, rec in loaded if rec.built is not None]
if not probeable:
    st.stop()
st.subheader("Probe the gradient flow")
c1, c2, c3, c4 = st.columns(4)
steps = c1.number_input("Steps (1 = gradient at these weights)", 1, 50, 1, key="ckpt_steps")
lr = c2.number_input("Learning rate of extra steps", 0.0, 10.0, 0.001, format="%.4f", key="ckpt_lr")
loss = c3.selectbox("Loss", ["cross_entropy", "sum_of_squares"], key="ckpt_loss")
size = c4.select_slider("Image size for torchvision models", [32, 64, 128, 224], value=64, key="ckpt_size")
b1, b2 = st.columns(2)
batch_file = b1.file_uploader("Optional: a batch to probe with (torch.save({'x': inputs, 'y': labels}))",
                              key="ckpt_batch")
folder = b2.text_input("…or a folder of images in class sub-folders, on this machine", key="ckpt_folder")
if st.button("Run the probe", type="primary", key="ckpt_run"):
    results = {}
    store = dx.RunStore(store_root())
    for ckpt, rec in probeable:
        shape = rec.built.input_shape if rec.built.config else (rec.built.input_shape[0], size, size)
        try:
            batch = batch_from_upload(batch_file) or (folder_batch(folder.strip(), shape) if folder.strip() else None)
            with st.spinner(f"Probing {ckpt.source}…"):
                results[ckpt.source] = dx.probe(rec.built.model, batch, loss, int(steps), store, input_shape=shape,
                                                lr=float(lr), run_name=f"checkpoint {ckpt.source}",
                                                meta={"checkpoint": ckpt.source, "architecture": rec.built.architecture})
        except dx.DiagnosticsError as exc:
            st.error(f"**{ckpt.source}**: {exc}")
    st.session_state["ckpt_results"] = results
    st.session_state["selected_runs"] = [r.run_id for r in results.values()]
results = st.session_state.get("ckpt_results", {})
if results:
    show_probes(results, dx.RunStore(store_root()))
    st.page_link("pages/gradient_flow.py", label="Open these runs on the Gradient flow page", icon=":material/show_chart:")
    st.page_link("pages/kernels.py", label="Open the kernel heatmaps", icon=":material/grid_on:")
