"""What a run's ``meta.json`` and ``annotations.json`` may hold: read with limits, validated field by field.

A run folder is data anyone with write access to the store can change, so one bad file must only ever make
*that* run unreadable (a :class:`~diagnostics.errors.StoreError` naming the field), never a page. Checked on
every read: the file's size, strict JSON (no ``NaN``/``Infinity``), nesting depth, and the type of every field
a page uses, written once in :data:`FIELD_TYPES`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import StoreError

#: Largest ``meta.json`` / ``annotations.json`` read (a run's metadata is a few kilobytes).
MAX_META_BYTES = 1 << 20
#: Deepest nesting of lists and dicts accepted (a model config nests two or three levels).
MAX_DEPTH = 16
#: Longest run name and notes read (characters); longer ones make the run damaged, not a page slow.
MAX_NAME_CHARS = 1000
MAX_NOTES_CHARS = 100_000
MAX_TAGS = 200
#: Limits when a name, tags or notes are saved from the dashboard or the API (stricter than what is read).
SAVE_NAME_CHARS = 200
SAVE_TAG_CHARS = 100
SAVE_TAGS = 50
SAVE_NOTES_CHARS = 10_000


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _text(limit: int):
    return lambda v: isinstance(v, str) and len(v) <= limit


#: Field -> (test, what it must be). A field that is absent is fine (pages fall back); a present one must pass.
FIELD_TYPES: dict[str, tuple[Any, str]] = {
    "run": (_text(128), "a string"),
    "name": (_text(MAX_NAME_CHARS), f"a string of at most {MAX_NAME_CHARS} characters"),
    "notes": (lambda v: v is None or _text(MAX_NOTES_CHARS)(v), f"a string of at most {MAX_NOTES_CHARS} characters"),
    "tags": (lambda v: v is None or (isinstance(v, list) and len(v) <= MAX_TAGS
                                      and all(_text(MAX_NAME_CHARS)(t) for t in v)),
             f"a list of at most {MAX_TAGS} short strings"),
    "status": (_text(32), "a short string"),
    "created": (_number, "a finite number (seconds since 1970)"),
    "steps": (lambda v: _int(v) and v >= 0, "a non-negative integer"),
    "layers": (lambda v: _int(v) and v >= 0, "a non-negative integer"),
    "parameters": (lambda v: v is None or _number(v), "a finite number"),
    "schema_version": (_int, "an integer"),
    "pid": (lambda v: v is None or _int(v), "an integer"),
    "host": (lambda v: v is None or _text(256)(v), "a string"),
    "model": (lambda v: v is None or _text(1000)(v), "a string"),
    "group": (lambda v: v is None or _text(256)(v), "a string"),
    "framework": (lambda v: v is None or _text(64)(v), "a string"),
    "variant": (lambda v: v is None or _text(256)(v), "a string"),
    "config": (lambda v: v is None or isinstance(v, dict), "an object"),
    "hist_edges": (lambda v: v is None or (isinstance(v, list) and all(_number(e) for e in v)),
                   "a list of finite numbers"),
}


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of ``value``, stopping once it passes ``limit``."""
    if limit < 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: Path) -> Any:
    """A JSON file read strictly: at most :data:`MAX_META_BYTES`, no ``NaN``/``Infinity``, nesting at most
    :data:`MAX_DEPTH`.

    Raises:
        FileNotFoundError: There is no such file.
        StoreError: Anything else wrong with it, saying what.
    """
    with path.open("rb") as f:
        raw = f.read(MAX_META_BYTES + 1)
    if len(raw) > MAX_META_BYTES:
        raise StoreError(f"its {path.name} is over {MAX_META_BYTES // 1024} KB")
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StoreError(f"its {path.name} is unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None
    if _depth(value, MAX_DEPTH) > MAX_DEPTH:
        raise StoreError(f"its {path.name} nests deeper than {MAX_DEPTH} levels")
    return value


def validate_meta(meta: dict[str, Any], source: str = "meta.json") -> None:
    """Check the type of every field pages use (:data:`FIELD_TYPES`).

    Raises:
        StoreError: Naming the first field that is wrong and what it must be.
    """
    for field, (ok, expected) in FIELD_TYPES.items():
        if field in meta and not ok(meta[field]):
            shown = repr(meta[field])
            raise StoreError(f"its {source} field {field!r} must be {expected}, not "
                             f"{shown[:60] + '…' if len(shown) > 60 else shown}")
