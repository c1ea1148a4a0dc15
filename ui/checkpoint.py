"""The Checkpoint page's cached loading and its result sections."""

from __future__ import annotations

import hashlib
import io

import streamlit as st

import diagnostics as dx
from diagnostics.checkpoints.architecture import Recognition, recognise
from diagnostics.checkpoints.loading import load_checkpoint
from diagnostics.views.checkpoint import ProbeView, weights_view
from diagnostics.views.text import markdown_text, mask_secrets

from .access import typed_path


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
    p = typed_path(path, "A checkpoint path")          # inside the launch roots; refused when read-only
    if p is not None:
        stamp = f"{p}:{p.stat().st_mtime_ns}:{p.stat().st_size}" if p.is_file() else str(p)
        sources.append((p.name or str(p), hashlib.sha1(stamp.encode()).hexdigest(), None, str(p)))
    for name, key, data, file_path in sources:
        try:
            loaded.append(_load(name, key, data, file_path))
        except dx.CheckpointError as exc:
            st.error(f"Could not load it: {markdown_text(exc, 2000)}")   # starts with the file's name, as text
        except OSError as exc:
            st.error(f"**{markdown_text(name)}** could not be read: {markdown_text(exc, 2000)}")
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
            st.json(mask_secrets(rec.metadata), expanded=False)        # *key*, *token*, ... hidden
    view = weights_view(ckpt, rec)
    if view.layers is not None:
        with st.expander(f"Layers ({len(view.layers)})"):
            st.dataframe(view.layers, hide_index=True, width="stretch")
        return
    st.warning(markdown_text(rec.problem, 2000))
    st.dataframe(view.summary, hide_index=True, width="stretch")
    if view.kernels:
        layer = st.selectbox("Conv weights", list(view.kernels), key=f"ckpt_wk_{ckpt.source}")
        st.plotly_chart(view.kernels[layer], key=f"ckpt_wfig_{ckpt.source}")


def show_probes(results: dict[str, dx.ProbeResult], view: ProbeView) -> None:
    """Gradient vs depth of every probed checkpoint on one chart, then each one's kernels and layer checks."""
    st.plotly_chart(view.depth, key="ckpt_depth")
    for name, result in results.items():
        st.markdown(f"#### {markdown_text(name)}")
        if result.synthetic:
            st.warning(f"Probed on **synthetic** data: {result.batch_source}. Gradients show the architecture and "
                       "weights, not your data; upload a batch for real inputs.")
        else:
            st.caption(f"Batch: {result.batch_source}. Loss per step: "
                       + ", ".join(f"{v:.4g}" for v in result.losses))
        if name in view.kernels:
            st.plotly_chart(view.kernels[name], key=f"ckpt_kfig_{result.run_id}")
        checks = view.checks[name]
        if not checks.empty:
            failed = checks["status"].eq("fail").sum()
            (st.error if failed else st.success)(
                f"Manual backward vs autograd on every supported layer: {failed} failure(s) in "
                f"{len(checks)} comparisons ({checks['status'].eq('skipped').sum()} skipped).")
            st.dataframe(checks[["layer", "tensor", "reference", "max_abs_err", "max_rel_err", "status", "reason"]],
                         hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="%.2e")
                                        for c in ("max_abs_err", "max_rel_err")})
