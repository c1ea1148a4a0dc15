"""Checkpoint: upload a checkpoint, see what it is, and probe its gradient flow — without writing code."""

import streamlit as st

import diagnostics as dx
from diagnostics.views.checkpoint import ProbeSettings, probe_checkpoints, probe_view
from diagnostics.views.text import markdown_text
from ui.access import read_only, typed_path
from ui.checkpoint import load_sources, show_probes, show_recognition
from ui.common import guard, require_router, store_root

require_router()
st.title("Checkpoint")
st.markdown("Upload one or more checkpoints (e.g. epoch 1 and epoch 50) to see their gradient flow side by side. "
            "Files are read with `torch.load(weights_only=True)`, as safetensors or as checked `torch.export` "
            "graphs: **nothing in a file is ever run**; pickled models, TorchScript, remote code and native "
            "packages are refused.")
files = st.file_uploader("Checkpoint files (.pt, .pth, .ckpt, .bin, .safetensors, .pt2; a Hugging Face model's "
                         "config.json together with its weights)", accept_multiple_files=True, key="ckpt_files")
path = st.text_input("…or a file or Hugging Face model folder on the machine running this app (for files over the "
                     "upload limit; safetensors are memory-mapped)", key="ckpt_path")
loaded = load_sources(files, path)
if not loaded:
    if not files and not path:
        st.info("Drop a checkpoint above. Supported: a `state_dict`, a training checkpoint holding one (keys such as "
                "`state_dict`, `state_dict_ema`, `model`; Lightning and DDP prefixes are removed), safetensors, "
                "Hugging Face model folders, `torch.export` archives (.pt2) and this project's own checkpoints. "
                "Rebuilt: this project's CNNs, torchvision and timm classifiers, transformers models.")
    st.stop()

for ckpt, rec in loaded:
    st.subheader(ckpt.source)
    with st.container(), guard(f"show {ckpt.source}"):
        show_recognition(ckpt, rec)
if not any(rec.built is not None for _, rec in loaded):
    st.stop()

st.subheader("Probe the gradient flow")
c1, c2, c3, c4 = st.columns(4)
b1, b2 = st.columns(2)
batch_file = b1.file_uploader("Optional: a batch (torch.save({'x': inputs, 'y': labels}), or named inputs such as "
                              "{'input_ids': ..., 'labels': ...})",
                              key="ckpt_batch")
settings = ProbeSettings(
    steps=int(c1.number_input("Steps (1 = gradient at these weights)", 1, 50, 1, key="ckpt_steps")),
    lr=float(c2.number_input("Learning rate of extra steps", 0.0, 10.0, 0.001, format="%.4f", key="ckpt_lr")),
    loss=c3.selectbox("Loss (auto: the model's own)", ["auto", "cross_entropy", "sum_of_squares"], key="ckpt_loss"),
    image_size=c4.select_slider("Image size for CNNs", [32, 64, 128, 224], value=64, key="ckpt_size"),
    batch_file=None if batch_file is None else batch_file.getvalue(),
    folder=str(typed_path(b2.text_input("…or a folder of images in class sub-folders, on this machine",
                                        key="ckpt_folder"), "The image folder") or ""))
store = dx.RunStore(store_root())
if st.button("Run the probe", type="primary", key="ckpt_run", disabled=read_only(),
             help="Off: this dashboard was started read-only (a probe writes runs)." if read_only() else None):
    with guard("run the probe"):
        bar = st.progress(0.0)
        runs = probe_checkpoints(loaded, store, settings, progress=lambda done, total, name: bar.progress(
            done / max(total, 1), text=f"Probing {markdown_text(name)} ({done + 1} of {total})…" if name else "Done"))
        bar.empty()
        for source, exc in runs.errors.items():
            st.error(f"**{markdown_text(source)}**: {markdown_text(exc, 2000)}")
        st.session_state["ckpt_results"] = runs.results
        st.session_state["selected_runs"] = [r.run_id for r in runs.results.values()]
results = st.session_state.get("ckpt_results", {})
if results:
    with guard("draw the probes"):
        show_probes(results, probe_view(results, store))
    st.page_link("pages/gradient_flow.py", label="Open these runs on the Gradient flow page", icon=":material/show_chart:")
    st.page_link("pages/kernels.py", label="Open the kernel heatmaps", icon=":material/grid_on:")
