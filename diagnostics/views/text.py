"""Strings that come from files (run names, tags, notes, layer names, metadata) made inert for each place they
are shown: one line of plain text, Markdown, plotly labels, CSV cells, metadata with secrets masked.

Anything read from a store or a checkpoint is data written by whoever could write the file, so it must never
become a heading, a link, an image fetched by another visitor's browser or a spreadsheet formula.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

#: Longest label shown for a run or layer (characters); the rest is cut with an ellipsis.
MAX_LABEL_CHARS = 120
#: Characters Markdown (CommonMark plus Streamlit's extensions) gives a meaning to.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$=^])")
_MESSAGE_SPECIAL = re.compile(r"([\\\[\]<>])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
#: Metadata keys whose values are hidden wherever metadata is shown.
SECRET_KEY = re.compile(r"key|token|password|passwd|secret|credential", re.IGNORECASE)
#: A CSV cell starting with one of these is a formula in a spreadsheet (OWASP's list, with tab and CR).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def one_line(text: object, limit: int = MAX_LABEL_CHARS) -> str:
    """``text`` as one line (newlines and control characters become one space), at most ``limit`` characters."""
    flat = _CONTROL.sub(" ", str(text)).strip()
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def markdown_text(text: object, limit: int = MAX_LABEL_CHARS) -> str:
    """``text`` for ``st.markdown`` or a widget label: one line, every Markdown and HTML character escaped, so
    it shows literally (no heading, link, image or tag)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", one_line(text, limit))


def message_text(text: object, limit: int = 2000) -> str:
    """An error message for ``st.error``: one line, with the characters of links, images and HTML tags
    (``[ ] < >``, and ``\\``) escaped, the rest of its Markdown (code spans, emphasis) kept as written.

    Messages quote file names, run and layer names; this keeps a quoted ``![x](http://host/p.png)`` or
    ``<a href>`` inert without turning every ``-`` and ``.`` of a message into an escape."""
    flat = _MESSAGE_SPECIAL.sub(r"\\\1", one_line(text, limit))
    return "\\" + flat if flat[:1] in ("#", "-", "+", "*", "=") else flat     # no heading or list item


def plotly_text(text: object, limit: int = MAX_LABEL_CHARS) -> str:
    """``text`` for a plotly title, legend entry or axis label: one line, HTML-escaped (plotly renders a subset
    of HTML, ``<a href>`` included, in every label; an entity such as ``&lt;`` shows as the character)."""
    return html.escape(one_line(text, limit), quote=True)


def csv_cell(value: Any) -> Any:
    """A value for a CSV export: a string starting with ``= + - @`` (or tab/CR) gets a leading ``'`` so that a
    spreadsheet shows it as text instead of running it as a formula; numbers are left alone."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with :func:`csv_cell` applied to every text column (a copy; numeric columns untouched)."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(csv_cell)
    out.columns = [csv_cell(str(c)) if isinstance(c, str) else c for c in out.columns]
    return out


def mask_secrets(value: Any, depth: int = 0) -> Any:
    """Metadata with the value of every key that looks secret (``*key*``, ``*token*``, ``*password*``,
    ``*secret*``, ``*credential*``) replaced by ``"••• (hidden)"``, at any depth."""
    if depth > 20:
        return "..."
    if isinstance(value, Mapping):
        return {k: "••• (hidden)" if SECRET_KEY.search(str(k)) else mask_secrets(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_secrets(v, depth + 1) for v in value]
    return value
