"""The Checkpoint page's cached loading and its result sections."""

from __future__ import annotations

import hashlib

import streamlit as st

import diagnostics as dx
from diagnostics.checkpoints.architecture import Recognition, recognise
from diagnostics.checkpoints.huggingface import HF_FILE
from diagnostics.checkpoints.loading import load_checkpoint
from diagnostics.views.checkpoint import ProbeView, weights_view
from diagnostics.views.text import markdown_text, mask_secrets

from .access import typed_path


#: Formats whose weights may belong to a timm model the user names (a plain state_dict in some file).
PICKABLE = ("state_dict", "training_checkpoint", "safetensors")


@st.cache_resource(show_spinner=False, max_entries=8)
def _load(name: str, key: str, _data: memoryview | dict | None, path: str | None,
          timm_name: str | None) -> tuple[dx.Checkpoint, Recognition]:
    # ``_data`` is not hashed (Streamlit skips arguments starting with "_"): ``key`` names the upload, and the
    # upload's own buffer is read in place, so the cache holds no second copy of it.
    ckpt = load_checkpoint(path if path else _data, name=name)
    ckpt.source = name
    return ckpt, recognise(ckpt, timm_name=timm_name)


def _sources(files: list, path: str) -> list[tuple[str, str, memoryview | dict | None, str | None]]:
    """(name, cache key, buffer or files of one model, server path) per checkpoint: the files of a Hugging Face
    model uploaded together (config.json beside its weights) are one checkpoint, every other file one each."""
    files = list(files or [])
    hf = [f for f in files if HF_FILE.match(f.name)]
    sources = []
    if any(f.name in ("config.json", "adapter_config.json") for f in hf):
        key = hashlib.sha1("|".join(sorted(f.file_id for f in hf)).encode()).hexdigest()
        sources.append((f"Hugging Face model ({', '.join(sorted(f.name for f in hf))})"[:200], key,
                        {f.name: f.getbuffer() for f in hf}, None))
        files = [f for f in files if f not in hf]
    sources += [(f.name, f.file_id, f.getbuffer(), None) for f in files]
    p = typed_path(path, "A checkpoint path")          # inside the launch roots; refused when read-only
    if p is not None:
        stamp = f"{p}:{p.stat().st_mtime_ns}:{p.stat().st_size}" if p.exists() else str(p)
        sources.append((p.name or str(p), hashlib.sha1(stamp.encode()).hexdigest(), None, str(p)))
    return sources


def load_sources(files: list, path: str) -> list[tuple[dx.Checkpoint, Recognition]]:
    """Load every uploaded checkpoint and the typed path (a file or a Hugging Face model folder), with a
    progress bar; each failure becomes an st.error, the rest still load."""
    loaded = []
    sources = _sources(files, path)
    bar = st.progress(0.0) if sources else None
    for i, (name, key, data, file_path) in enumerate(sources):
        bar.progress(i / len(sources), text=f"Loading and recognising {markdown_text(name)} safely "
                                            f"({i + 1} of {len(sources)})…")
        try:
            loaded.append(_load(name, key, data, file_path, st.session_state.get(f"ckpt_timm_{name}") or None))
        except dx.CheckpointError as exc:
            st.error(f"Could not load it: {markdown_text(exc, 2000)}")   # starts with the file's name, as text
        except OSError as exc:
            st.error(f"**{markdown_text(name)}** could not be read: {markdown_text(exc, 2000)}")
    if bar is not None:
        bar.empty()
    return loaded


@st.cache_data(show_spinner=False)
def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def show_recognition(ckpt: dx.Checkpoint, rec: Recognition) -> None:
    """What was recognised (family, name, parameters, keys matched, missing, unexpected); weight-only views and
    a searchable pick of the timm model when the architecture is unknown."""
    c1, c2, c3 = st.columns(3)
    c1.metric("Format", rec.format.replace("_", " "))
    c2.metric("Parameters", f"{rec.parameters:,}")
    c3.metric("Tensors", f"{rec.tensors:,}")
    built = rec.built
    # Architecture, family and alternatives are names this library made (known classes, timm names), not text
    # from the file, so they are shown as they are.
    st.markdown(f"**Architecture:** {built.architecture if built else 'unknown'}")
    if built is not None and built.family:
        st.caption(f"Family: {built.family} · {built.matched:,} of {rec.tensors:,} tensors matched by name and shape"
                   + (f" · also fits: {', '.join(built.alternatives[:5])}" if built.alternatives else ""))
    if built is not None and (built.missing or built.unexpected):
        with st.expander(f"Keys: {len(built.missing)} missing, {len(built.unexpected)} unexpected"):
            st.json({"missing (tied to a saved key)": built.missing[:200], "unexpected": built.unexpected[:200]})
    if ckpt.stripped_prefix:
        st.caption(f"Removed the key prefix `{ckpt.stripped_prefix}` (DDP / Lightning wrappers).")
    if rec.metadata:
        with st.expander("Metadata saved with the weights"):
            st.json(mask_secrets(rec.metadata), expanded=False)        # *key*, *token*, ... hidden
    if ckpt.format in PICKABLE and (built is None or built.family.startswith("timm")):
        st.selectbox("Is it a timm model? Pick its name (type to search)", ["", *_timm_names()],
                     key=f"ckpt_timm_{ckpt.source}", help="The weights are loaded into timm's model of that name "
                     "(random init, nothing downloaded) and checked key by key.")
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
            st.warning(f"Probed on **synthetic** data: {markdown_text(result.batch_source)}. Gradients show the architecture and "
                       "weights, not your data; upload a batch for real inputs.")
        else:
            st.caption(f"Batch: {markdown_text(result.batch_source)}. Loss per step: "
                       + ", ".join(f"{v:.4g}" for v in result.losses))
        for note in result.notes:
            st.info(markdown_text(note))
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
