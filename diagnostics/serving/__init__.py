"""Sharing the dashboard safely: the folders paths are confined to, who may use it and how, and one queue
with a limit for heavy work.

``roots`` (fixed root folders, confined paths, bounded folder scans), ``access`` (token, read-only mode,
allowed ``Host`` names, the settings the launcher leaves in the environment), ``compute`` (work estimates
against a per-server limit, one first-in first-out queue with cancel) and ``__main__`` (the launcher behind
``bash dev.sh app``). It imports only :mod:`diagnostics.errors`, so every part may import it (the dataset
loader bounds its folder scans with :func:`roots.scan_files`); it never imports streamlit.
"""

from .access import ServeSettings, host_allowed, is_loopback
from .compute import ComputeQueue, Ticket
from .roots import Roots, scan_files

__all__ = ["ComputeQueue", "Roots", "ServeSettings", "Ticket", "host_allowed", "is_loopback", "scan_files"]
