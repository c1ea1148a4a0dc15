"""The folders a shared dashboard may touch: fixed at launch, every typed path confined to them, scans bounded.

Like TensorBoard's ``--logdir`` and Jupyter's ``root_dir``: the run store, checkpoint paths, dataset and image
folders typed into the dashboard must lie inside one of the roots given at launch (by default the store folder
and the working directory). A path is resolved (``..`` and symlinks followed) *before* it is checked, so a
symlink inside a root that points out of it is refused like any other outside path; hidden names (``.ssh``,
``.git``) below a root are refused as in Jupyter. A refusal never says whether the path exists, and no message
lists a folder's entries.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import AccessError, DataError

#: A folder scan (image folders) stops with an error after visiting this many entries ...
SCAN_MAX_ENTRIES = 100_000
#: ... or after this many seconds.
SCAN_MAX_SECONDS = 10.0


class Roots:
    """The folders paths are confined to, resolved once at launch.

    Example::

        roots = Roots(["runs", "."])
        store = roots.confine("runs/experiment-1", "The run store")     # -> absolute, resolved Path
        roots.confine("/etc", "The run store")                          # AccessError, same text if it existed

    Args:
        paths: The root folders (relative ones are taken from the working directory). Folders that do not exist
            yet (a store before its first run) are allowed.
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        resolved: list[Path] = []
        for p in paths:
            root = Path(os.path.realpath(Path(p).expanduser()))
            if root not in resolved:
                resolved.append(root)
        if not resolved:
            raise AccessError("give at least one root folder")
        self.paths: tuple[Path, ...] = tuple(resolved)

    def __repr__(self) -> str:
        return f"Roots({[str(p) for p in self.paths]})"

    def describe(self) -> str:
        """The roots for messages: ``a, b``."""
        return ", ".join(str(p) for p in self.paths)

    def refusal(self, path: str, what: str) -> AccessError:
        """The one message for every path refused: the same whether or not it exists."""
        shown = path if len(path) <= 200 else path[:200] + "…"
        return AccessError(f"{what} must be a folder or file inside {self.describe()} (the folders this dashboard "
                           f"was started with); {shown!r} is not one of those, so it was not opened")

    def confine(self, path: str | os.PathLike[str], what: str = "The path") -> Path:
        """``path`` resolved (``~``, ``..`` and symlinks followed), if it lies inside a root.

        Args:
            path: What the user typed; relative paths start from the working directory.
            what: How messages name it (``"The run store"``).

        Returns:
            The resolved absolute path; open that one, not ``path``.

        Raises:
            AccessError: Outside every root, through a symlink leaving them, or through a hidden name (a part
                starting with ``.``) below a root. The message is the same whether or not the path exists.
        """
        text = os.fspath(path)
        if not text.strip() or "\x00" in text:
            raise self.refusal(text, what)
        resolved = Path(os.path.realpath(Path(text.strip()).expanduser()))
        for root in self.paths:
            if resolved == root or resolved.is_relative_to(root):
                inside = resolved.relative_to(root).parts
                if any(part.startswith(".") for part in inside):
                    break
                return resolved
        raise self.refusal(text, what)

    def contains(self, path: str | os.PathLike[str]) -> bool:
        """Whether :meth:`confine` would accept ``path``."""
        try:
            self.confine(path)
        except AccessError:
            return False
        return True


def scan_files(folder: str | os.PathLike[str], suffixes: Sequence[str] | None = None, *,
               max_entries: int = SCAN_MAX_ENTRIES, max_seconds: float = SCAN_MAX_SECONDS) -> list[Path]:
    """Every file below ``folder`` (sorted), without following anything out of it, within a budget.

    Folder symlinks are never followed (no loops through ``/proc/self/root``); a file symlink is kept only
    when it resolves inside ``folder``; hidden names are skipped.

    Args:
        folder: The folder to walk.
        suffixes: Keep files with these (lower-case) suffixes only, e.g. ``(".png", ".jpg")``.
        max_entries: Entries visited (files and folders, kept or not) before giving up.
        max_seconds: Seconds before giving up.

    Raises:
        DataError: The folder has more entries than ``max_entries`` or took longer than ``max_seconds``.
    """
    top = Path(os.path.realpath(folder))
    wanted = tuple(s.lower() for s in suffixes) if suffixes else None
    deadline = time.monotonic() + max_seconds
    visited, found, pending = 0, [], [top]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue                                          # unreadable sub-folder: nothing from it
        for entry in entries:
            visited += 1
            if visited > max_entries:
                raise DataError(f"the folder has more than {max_entries:,} files and folders; give a smaller one")
            if time.monotonic() > deadline:
                raise DataError(f"reading the folder took longer than {max_seconds:g} s; give a smaller one")
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            elif entry.is_symlink():
                target = Path(os.path.realpath(entry.path))
                if target.is_relative_to(top) and target.is_file():
                    found.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                found.append(Path(entry.path))
    return sorted(p for p in found if wanted is None or p.suffix.lower() in wanted)
