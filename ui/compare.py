"""Streamlit pieces of the Compare training page: settings form, polling progress panel, cached comparison reads."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

import diagnostics as dx
from diagnostics.experiments.comparison import ComparisonData, comparison_runs, comparisons, load_comparison
from diagnostics.experiments.data import DATASETS
from diagnostics.experiments.models import ACTIVATIONS, INITS, VARIANTS
from diagnostics.experiments.jobs import ComparisonJob
from diagnostics.experiments.presets import PRESETS
from diagnostics.experiments.training import TrainConfig
from diagnostics.views.text import csv_safe, message_text
from diagnostics.views.training_comparison import CompareView

from .access import compute_queue, confine, session_id
from .common import store_version

JOB_KEY = "compare_job"
TICKET_KEY = "compare_ticket"
GROUP_KEY = "compare_group"
INIT_LABELS = {"default": "PyTorch default", "he": "He (Kaiming, fan-in)", "xavier": "Xavier (Glorot, gain 1)",
               "orthogonal": "Orthogonal (Saxe)"}
INIT_HELP = "  \n".join(f"**{INIT_LABELS[k]}**: {v}" for k, v in INITS.items())
ON_DISK = {"folder", "mnist", "fashion-mnist", "cifar10"}


def settings_form(running: bool = False) -> dict[str, Any] | None:
    """The comparison settings; returns them when the user presses Start, else ``None``.

    Args:
        running: A comparison of this session is still training: Start is disabled until it ends.
    """
    defaults = TrainConfig()
    with st.form("compare_settings"):
        c1, c2, c3 = st.columns(3)
        variants = c1.multiselect("Variants", list(VARIANTS), default=list(VARIANTS), key="cmp_variants")
        depth = c1.slider("Depth (conv layers)", 2, 100, 20, key="cmp_depth")
        width = c1.number_input("Width (channels per conv layer)", 1, 256, 16, key="cmp_width")
        activation = c2.selectbox("Activation", list(ACTIVATIONS), key="cmp_activation")
        init = c2.selectbox("Initialisation", list(INITS), format_func=INIT_LABELS.get, key="cmp_init",
                            help=INIT_HELP)
        sweep = c1.text_input("Depth sweep (optional, e.g. 5, 10, 20, 40)", key="cmp_sweep",
                              help="Every variant at every depth listed (the slider is then ignored), with one "
                                   "chart of the first/last gradient ratio and the accuracy against depth.")
        steps = c2.number_input("Steps per variant", 1, 20_000, defaults.steps, key="cmp_steps")
        lr = c3.number_input("Learning rate (SGD, momentum 0.9)", 1e-5, 10.0, defaults.lr, step=0.001,
                             format="%.4f", key="cmp_lr")
        dataset = c3.selectbox("Dataset", DATASETS, key="cmp_dataset",
                               help="digits: scikit-learn's 1,797 real 8×8 digits, offline. signals1d: generated "
                                    "1-D signals (Conv1d). folder/mnist/fashion-mnist/cifar10 read from disk.")
        root = c3.text_input("Dataset folder (for folder, mnist, fashion-mnist, cifar10)", key="cmp_root")
        download = c3.checkbox("Download torchvision data if missing", key="cmp_download")
        start = st.form_submit_button("Start comparison", type="primary", disabled=running,
                                      help="A comparison is still training." if running else None)
    if not start:
        return None
    try:
        depths = [int(d) for d in sweep.replace(",", " ").split()]
    except ValueError:
        st.error(f"The depth sweep must list whole numbers, e.g. 5, 10, 20, 40; got {sweep!r}")
        return None
    return {"variants": variants, "depth": depths if len(depths) > 1 else (depths or [int(depth)])[0],
            "width": int(width),
            "activation": activation, "init": init, "steps": int(steps), "lr": float(lr), "dataset": dataset,
            "data_root": (root.strip() or None) if dataset in ON_DISK else None, "download": download}


def preset_picker(running: bool = False) -> dict[str, Any] | None:
    """The one-click comparisons of :data:`PRESETS`; returns a preset's settings when its Start is pressed."""
    with st.expander("Presets: classic experiments in one click"):
        key = st.selectbox("Preset", list(PRESETS), format_func=lambda k: PRESETS[k].title, key="cmp_preset")
        preset = PRESETS[key]
        st.markdown(preset.description)
        st.caption("Settings: " + ", ".join(f"{k}={v}" for k, v in preset.settings.items() if k != "variants")
                   + "; runs: " + ", ".join(preset.settings["variants"]))
        if st.button("Start this preset", key="cmp_preset_start", disabled=running):
            return dict(preset.settings)
    return None


def show_view(view: CompareView, group: str) -> None:
    """The comparison's reading, notes, figures side by side and summary table."""
    st.markdown(view.reading)
    for note in view.notes:
        st.info(note)
    pairs = [("loss", "accuracy"), ("depth", "ratio"), ("gain", "cumulative")]
    for left, right in pairs:
        columns = st.columns(2)
        for column, key in zip(columns, (left, right)):
            if key in view.figures:
                column.plotly_chart(view.figures[key], theme="streamlit", key=f"cmp_{key}_fig")
    if "sweep" in view.figures:
        st.plotly_chart(view.figures["sweep"], theme="streamlit", key="cmp_sweep_fig")
    table = view.summary.rename(columns={"final_loss": "final loss (last 10 steps)", "accuracy": "held-out accuracy",
                                         "ratio_median": "first/last ratio (median)",
                                         "ratio_final": "first/last ratio (last)"})
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.2e") for c in table.columns if "ratio" in c})
    st.download_button("Download the first/last ratios (CSV)", csv_safe(view.ratios).to_csv(index=False),
                       f"{group}-ratios.csv", mime="text/csv", key="cmp_download_ratios")


def start_job(root: str, settings: dict[str, Any]) -> None:
    """Confine the dataset folder, validate, load the data, estimate the work and queue the training in the
    process's one compute queue (refused over its limit); errors are shown, never raised."""
    try:
        if settings.get("data_root"):
            settings = {**settings, "data_root": str(confine(settings["data_root"], "The dataset folder"))}
        job = ComparisonJob(store=root, **settings)
        ticket = compute_queue().submit(session_id(), f"comparison {job.group} ({len(job.variants)} runs)",
                                        job.work, job.run, cancel=job.cancel)
    except dx.DiagnosticsError as exc:
        st.error(f"Could not start the comparison: {message_text(exc, 800)}")
        return
    st.session_state[JOB_KEY], st.session_state[TICKET_KEY] = job, (job.group, ticket)


def current_job() -> tuple[ComparisonJob | None, Any]:
    """This session's comparison and its queue ticket (``None`` for a job started outside the queue)."""
    job = st.session_state.get(JOB_KEY)
    group, ticket = st.session_state.get(TICKET_KEY, (None, None))
    return job, (ticket if job is not None and group == job.group else None)


def is_running(job: ComparisonJob | None, ticket: Any) -> bool:
    """Waiting for its turn or training."""
    return job is not None and not job.finished and not (ticket is not None and ticket.finished)


def show_job_error(job: ComparisonJob, ticket: Any = None) -> None:
    """Why a comparison stopped: cancelled, the library's reason as a message, anything else with its traceback."""
    if job.cancelled or (ticket is not None and ticket.state == "cancelled"):
        st.info("The comparison was cancelled; its runs keep the steps recorded before it stopped.")
    elif isinstance(job.exception, dx.DiagnosticsError):
        st.error(f"The comparison stopped: {message_text(job.error)}")
    else:
        st.error("The comparison stopped with an unexpected error (a bug):")
        st.exception(job.exception)


@st.fragment(run_every=1.0)
def progress_panel(job: ComparisonJob, ticket: Any = None) -> None:
    """The place in the queue, then one progress bar per run (per variant, and per depth in a sweep), refreshed
    every second, with a Cancel button."""
    queue = compute_queue()
    position = queue.position(ticket) if ticket is not None else None
    st.caption(f"Comparison `{job.group}`: about {job.work:,.0f} GMAC (10⁹ multiply-adds) of this dashboard's "
               f"limit of {queue.limit_gmac:,.0f}. It runs in the background; you can keep using the dashboard.")
    if position:
        st.info(f"Waiting for its turn: number {position} in this dashboard's queue (one job runs at a time, for "
                "every visitor).", icon=":material/hourglass_top:")
    if ticket is not None and st.button("Cancel the comparison", key="cmp_cancel"):
        queue.cancel(ticket)
    latest = job.latest()
    for variant, fraction in job.fractions().items():
        p = latest.get(variant)
        text = f"{variant}: waiting"
        if p is not None:
            acc = "–" if p.accuracy != p.accuracy else f"{p.accuracy:.0%}"
            state = " (diverged)" if p.diverged else (" (done)" if p.done else "")
            text = f"{variant}: step {p.step}/{p.steps}, loss {p.loss:.3g}, held-out accuracy {acc}{state}"
        st.progress(min(1.0, fraction), text=text)
    if not is_running(job, ticket):
        st.rerun(scope="app")


@st.cache_data(show_spinner=False, max_entries=8)
def _comparisons(root: str, signature: tuple) -> pd.DataFrame:
    return comparisons(dx.RunStore(root))


def past_comparisons(root: str) -> pd.DataFrame:
    """The comparisons in the store, newest first (cached until a run changes)."""
    return _comparisons(root, store_version(root))


@st.cache_data(show_spinner=False, max_entries=8)
def _comparison_data(root: str, group: str, signature: tuple) -> ComparisonData:
    store = dx.RunStore(root)
    return load_comparison(store, comparison_runs(store, group))


def comparison_data(root: str, group: str) -> ComparisonData:
    """One comparison's curves and conv-layer statistics (cached until a run changes)."""
    return _comparison_data(root, group, store_version(root))
