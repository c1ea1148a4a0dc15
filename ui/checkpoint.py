"""The Checkpoint page's cached loading and its result sections."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pandas as pd
import streamlit as st

import diagnostics as dx
from diagnostics.checkpoints.architecture import Recognition, conv_kernels, layer_table, recognise, weight_summary
from diagnostics.checkpoints.loading import load_checkpoint
from diagnostics.views.matrices import depth_profile, stat_matrix_from_frame
from diagnostics.views.figures import depth_figure, kernel_grid_figure, run_colors
from diagnostics.checkpoints.probe import Batch, load_batch_file


@st.cache_resource(show_spinner="Loading the checkpoint safely…", max_entries=8)
def _load(name: str, key: str, data: bytes | None, path: str | None) -> tuple[dx.Checkpoint, Recognition]:
    if path:
        ckpt = load_checkpoint(path)
    else:
        upload = io.BytesIO(data or b"")
        upload.name = name                              # so every message names the uploaded file
        ckpt = load_checkpoint(upload)
    ckpt.source = name
    return ckpt, recognise(ckpt)


def load_sources(files: list, path: str) -> list[tuple[dx.Checkpoint, Recognition]]:
    """Load every uploaded file and the typed path; each failure becomes an st.error, the rest still load."""
    loaded = []
    sources = [(f.name, f.file_id, f.getvalue(), None) for f in files or []]
    if path.strip():
        p = Path(path.strip()).expanduser()
        stamp = f"{p}:{p.stat().st_mtime_ns}:{p.stat().st_size}" if p.is_file() else str(p)
        sources.append((p.name or str(p), hashlib.sha1(stamp.encode()).hexdigest(), None, str(p)))
    for name, key, data, file_path in sources:
        try:
            loaded.append(_load(name, key, data, file_path))
        except dx.CheckpointError as exc:
            st.error(f"Could not load it: {exc}")         # the message starts with the file's name
        except OSError as exc:
            st.error(f"**{name}** could not be read: {exc}")
    return loaded


def show_recognition(ckpt: dx.Checkpoint, rec: Recognition) -> None:
    """What was recognised; weight-only views when the architecture is unknown."""
    c1, c2, c3 = st.columns(3)
    c1.metric("Format", rec.format.replace("_", " "))
    c2.metric("Parameters", f"{rec.parameters:,}")
    c3.metric("Tensors", f"{rec.tensors:,}")
    st.markdown(f"**Architecture:** {rec.built.architecture if rec.built else 'unknown'}")
    if ckpt.stripped_prefix:
        st.caption(f"Removed the key prefix `{ckpt.stripped_prefix}` (DDP / Lightning wrappers).")
    if rec.metadata:
        with st.expander("Metadata saved with the weights"):
            st.json(rec.metadata, expanded=False)
    if rec.built is not None:
        with st.expander(f"Layers ({len(layer_table(rec.built.model))})"):
            st.dataframe(layer_table(rec.built.model), hide_index=True, width="stretch")
        return
    st.warning(rec.problem)
    summary = weight_summary(ckpt.state_dict)
    st.dataframe(summary[["param", "shape", "numel", "norm", "mean_abs", "max_abs", "nonfinite"]], hide_index=True,
                 width="stretch")
    kernels = conv_kernels(ckpt.state_dict)
    if kernels:
        layer = st.selectbox("Conv weights", list(kernels), key=f"ckpt_wk_{ckpt.source}")
        w = kernels[layer][:16, :16]
        st.plotly_chart(kernel_grid_figure(w, f"W of {layer} (first 16×16 channel pairs)"),
                        key=f"ckpt_wfig_{ckpt.source}")


def show_probes(results: dict[str, dx.ProbeResult], store: dx.RunStore) -> None:
    """Gradient vs depth of every probed checkpoint on one chart, then each one's kernels and layer checks."""
    names = {r.run_id: name for name, r in results.items()}
    colors = run_colors(store.run_ids())            # the same colour per run as on every other page
    profiles = []
    for name, result in results.items():
        matrix = stat_matrix_from_frame(result.frame, result.run_id, "weight_grad_norm")
        profiles.append(depth_profile(matrix, int(matrix.steps[-1])) if not matrix.empty else pd.DataFrame())
    st.plotly_chart(depth_figure(profiles, "weight_grad_norm", True, colors, names), key="ckpt_depth")
    for name, result in results.items():
        st.markdown(f"#### {name}")
        if result.synthetic:
            st.warning(f"Probed on **synthetic** data: {result.batch_source}. Gradients show the architecture and "
                       "weights, not your data; upload a batch for real inputs.")
        else:
            st.caption(f"Batch: {result.batch_source}. Loss per step: "
                       + ", ".join(f"{v:.4g}" for v in result.losses))
        steps = store.kernel_steps(result.run_id)
        if steps:
            snap = store.kernel_snapshot(result.run_id, steps[-1])
            layer = next(iter(snap.arrays))
            st.plotly_chart(kernel_grid_figure(snap.arrays[layer]["grad"][:16, :16],
                                               f"∂L/∂W of {layer} (first 16×16 channel pairs)"),
                            key=f"ckpt_kfig_{result.run_id}")
        if not result.checks.empty:
            failed = result.checks["status"].eq("fail").sum()
            (st.error if failed else st.success)(
                f"Manual backward vs autograd on every supported layer: {failed} failure(s) in "
                f"{len(result.checks)} comparisons ({result.checks['status'].eq('skipped').sum()} skipped).")
            st.dataframe(result.checks[["layer", "tensor", "reference", "max_abs_err", "max_rel_err", "status",
                                        "reason"]], hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="%.2e")
                                        for c in ("max_abs_err", "max_rel_err")})


def batch_from_upload(upload) -> Batch | None:
    """A batch from an uploaded tensor file (``torch.save({"x": x, "y": y})``), or None."""
    return None if upload is None else load_batch_file(upload.getvalue())
