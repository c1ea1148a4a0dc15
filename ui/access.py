"""Sharing the dashboard: the gate every script run passes (Host, token), read-only mode, confined paths,
and the process's compute queues (one for comparisons, one for gradient checks, each shared by every session).

What the gate covers: it runs first in ``app.py`` on every script run, so without the token, or from a ``Host``
that is not served, no page, widget or file of the app is reached (pages opened by URL are routed through
``app.py`` first, see ``require_router``). It cannot cover what Streamlit serves before a script runs: the
static front-end files, ``/_stcore/health``, and uploads to a session's own upload endpoint (XSRF-protected,
capped by ``server.maxUploadSize``, and only ever read by the gated script). With ``--allow-host`` the
launcher also sets Streamlit's ``server.allowedHosts``, which refuses the WebSocket itself for other names.
"""

from __future__ import annotations

import os
import sys
import traceback
import uuid
from pathlib import Path

import streamlit as st

from diagnostics.errors import AccessError
from diagnostics.serving import ComputeQueue, ServeSettings, host_allowed
from diagnostics.serving.compute import DEFAULT_CHECK_LIMIT_GMAC, DEFAULT_LIMIT_GMAC
from diagnostics.views.text import markdown_text, message_text

_AUTHORISED = "_gfd_authorised"
_SETTINGS: dict[tuple, ServeSettings] = {}


def settings() -> ServeSettings:
    """This process's sharing settings (from the launcher's environment variables), made once per process."""
    keys = ("GFD_STORE", "GFD_ROOTS", "GFD_TOKEN", "GFD_READ_ONLY", "GFD_ALLOWED_HOSTS")
    address = st.get_option("server.address")
    key = (address, os.getcwd(), *(os.environ.get(k, "") for k in keys))
    if key not in _SETTINGS:
        made = ServeSettings.from_env(address=address)
        if made.token_generated:             # served beyond loopback without a choice: print it, as Jupyter does
            print(f"\n  Gradient Flow Diagnostics needs a token (served on {address or 'every interface'}). "
                  f"Open the app with ?token={made.token}\n", file=sys.stderr, flush=True)
        _SETTINGS[key] = made
    return _SETTINGS[key]


def gate() -> ServeSettings:
    """Refuse a request from a Host not served, or without the token; otherwise return the settings.

    The token is taken from ``?token=`` in the URL (as Jupyter prints it) or from the form shown instead of
    the app, and remembered for the session (a reload on another page asks again).
    """
    s = settings()
    if not host_allowed(st.context.headers.get("Host"), s.allowed_hosts):
        _no_pages()
        st.error("This dashboard does not answer to this address. Open it by its machine's name or IP address.",
                 icon=":material/block:")
        st.stop()
    if s.exposed:
        st.set_option("client.showErrorDetails", "type")          # no tracebacks with server paths for visitors
    if s.token is None or st.session_state.get(_AUTHORISED):
        return s
    if s.token_matches(st.query_params.get("token")):
        st.session_state[_AUTHORISED] = True
        return s
    _no_pages()
    st.title("Gradient Flow Diagnostics")
    with st.form("gfd_token"):
        given = st.text_input("Token", type="password", key="gfd_token_field",
                              help="Printed on the console of whoever started the dashboard, with the URL to open.")
        sent = st.form_submit_button("Open the dashboard")
    if sent and s.token_matches(given):
        st.session_state[_AUTHORISED] = True
        st.rerun()
    if sent or "token" in st.query_params:
        st.error("That is not the token.", icon=":material/block:")
    st.info("This dashboard is shared and needs a token: open the link printed when it was started, or paste "
            "the token above.")
    st.stop()
    raise AssertionError("st.stop() returned")                       # pragma: no cover


def _gate_page() -> None:
    """The one page a refused session has: nothing (what the gate drew is all it sees)."""


def _no_pages() -> None:
    """Register no page but an empty, hidden one: without a call to ``st.navigation`` Streamlit would list the
    ``pages/`` folder in the sidebar (its legacy multipage mode)."""
    st.navigation([st.Page(_gate_page, title="Gradient Flow Diagnostics", url_path="gate")], position="hidden")


def read_only() -> bool:
    """Whether the dashboard was started with ``--read-only``."""
    return settings().read_only


def refused_in_read_only(what: str) -> bool:
    """In read-only mode, say that ``what`` is off and return True (the caller shows nothing else for it)."""
    if read_only():
        st.info(f"{what} is turned off: this dashboard was started read-only.", icon=":material/lock:")
        return True
    return False


def confine(path: str, what: str) -> Path:
    """A typed path inside the roots given at launch; :class:`AccessError` otherwise (see ``Roots.confine``)."""
    return settings().roots.confine(path, what)


def typed_path(path: str, what: str) -> Path | None:
    """A path typed into a field, confined to the roots (and refused in read-only mode); ``None`` when empty
    or refused, with the reason shown as an error (the same text whether or not it exists)."""
    if not path or not path.strip():
        return None
    try:
        settings().require_write(f"{what} typed on the server")
        return confine(path, what)
    except AccessError as exc:
        st.error(markdown_text(exc, 600), icon=":material/block:")
        return None


def show_bug(exc: BaseException) -> None:
    """An unexpected error: with its traceback locally; shared, its message only (the traceback on the console)."""
    if not settings().exposed:
        st.exception(exc)
        return
    traceback.print_exception(exc, file=sys.stderr)
    st.error(f"An unexpected error ({type(exc).__name__}): {message_text(exc, 500)}")


@st.cache_resource(show_spinner=False)
def _compute_queue(kind: str, limit_gmac: float) -> ComputeQueue:
    return ComputeQueue(limit_gmac)


def compute_queue(kind: str = "comparisons") -> ComputeQueue:
    """The queue of one kind of heavy work of this process, shared by every session: ``"comparisons"`` (limit
    per job ``GFD_COMPUTE_LIMIT_GMAC``, default :data:`~diagnostics.serving.compute.DEFAULT_LIMIT_GMAC`) or
    ``"checks"`` (``GFD_CHECK_LIMIT_GMAC``). Two kinds, so that a check of a few seconds never waits behind
    minutes of training; each runs one job at a time."""
    if kind == "checks":
        return _compute_queue(kind, check_limit())
    return _compute_queue(kind, float(os.environ.get("GFD_COMPUTE_LIMIT_GMAC", DEFAULT_LIMIT_GMAC)))


def check_limit() -> float:
    """The limit of one gradient check in GMAC (``GFD_CHECK_LIMIT_GMAC``, default 20)."""
    return float(os.environ.get("GFD_CHECK_LIMIT_GMAC", DEFAULT_CHECK_LIMIT_GMAC))


def session_id() -> str:
    """A short id of this browser session, for the queue's listing."""
    if "_gfd_session" not in st.session_state:
        st.session_state["_gfd_session"] = uuid.uuid4().hex[:6]
    return st.session_state["_gfd_session"]
