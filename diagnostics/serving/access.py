"""Who may use a shared dashboard and how: a token, read-only mode, allowed ``Host`` names, fixed roots.

The launcher (``python -m diagnostics.serving``, behind ``bash dev.sh app``) writes the choices into environment
variables and the app reads them back with :meth:`ServeSettings.from_env`:

==========================  =========================================================================
``GFD_STORE``               the run store (default ``runs``)
``GFD_ROOTS``               root folders, separated by ``os.pathsep`` (default: the store and the working
                            directory)
``GFD_TOKEN``               a token every visitor must give (``?token=...`` in the URL, or the form)
``GFD_READ_ONLY``           ``1``: no training, no probes, no paths typed for checkpoints, no rename/delete
``GFD_ALLOWED_HOSTS``       extra ``Host`` names served, comma-separated (``*.example.com`` allowed)
==========================  =========================================================================

Served on a loopback address nothing is required. Served beyond it with neither a token nor read-only mode, a
token is made up and printed on the server's console, as Jupyter does.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import AccessError
from .roots import Roots

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(address: str | None) -> bool:
    """Whether a server address (``server.address``) serves this machine only. Empty means every interface."""
    if not address:
        return False
    if address.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host: str | None) -> str | None:
    """The name in a ``Host`` header, lower-case, without port or trailing dot; ``None`` if malformed."""
    if host is None:
        return None
    try:
        parts = urlsplit(f"//{host.strip()}")
        parts.port                                        # noqa: B018 - raises on a non-numeric port
    except ValueError:
        return None
    name = parts.hostname
    if not name or parts.username is not None or parts.password is not None or parts.path or parts.query:
        return None
    return name.rstrip(".").lower()


def host_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a request's ``Host`` is one this dashboard serves (the DNS-rebinding check).

    A page on ``evil.example`` whose name the attacker re-points at this machine sends ``Host: evil.example``;
    only names listed (``localhost``, this machine's names, ``--allow-host`` ones, ``*.suffix`` patterns) and
    IP addresses pass. A request without ``Host`` (not a browser) passes.
    """
    if host is None:
        return True
    name = host_name(host)
    if name is None:
        return False
    try:
        ipaddress.ip_address(name)
        return True                                       # an address cannot be re-pointed by DNS
    except ValueError:
        pass
    for pattern in allowed:
        pattern = pattern.strip().rstrip(".").lower()
        if pattern == name or pattern == "*" or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


def machine_names() -> tuple[str, ...]:
    """``localhost`` and this machine's own names (short and fully qualified)."""
    names = [*LOOPBACK_NAMES]
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and name.lower() not in names:
            names.append(name.lower())
    return tuple(names)


@dataclass(frozen=True)
class ServeSettings:
    """How this dashboard process is shared; one per process, from the launcher's environment variables.

    Attributes:
        store: The run store given at launch.
        roots: The folders paths are confined to.
        token: The token visitors must give, or ``None``.
        read_only: No training, probes, paths typed for checkpoints, rename or delete.
        allowed_hosts: ``Host`` names served (besides IP addresses).
        token_generated: The token was made up here (served beyond loopback without a choice).
    """

    store: str
    roots: Roots
    token: str | None = None
    read_only: bool = False
    allowed_hosts: tuple[str, ...] = field(default_factory=machine_names)
    token_generated: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, address: str | None = "127.0.0.1") -> ServeSettings:
        """The settings the launcher left in ``environ`` (default ``os.environ``) for a server on ``address``."""
        env = os.environ if environ is None else environ
        store = env.get("GFD_STORE", "runs") or "runs"
        roots = [p for p in env.get("GFD_ROOTS", "").split(os.pathsep) if p.strip()] or [store, os.getcwd()]
        read_only = env.get("GFD_READ_ONLY", "").strip().lower() in ("1", "true", "yes")
        token = env.get("GFD_TOKEN", "").strip() or None
        generated = False
        if token is None and not read_only and not is_loopback(address):
            token, generated = secrets.token_urlsafe(24), True
        extra = tuple(h.strip() for h in env.get("GFD_ALLOWED_HOSTS", "").split(",") if h.strip())
        return cls(store, Roots([store, *roots]), token, read_only, (*machine_names(), *extra), generated)

    def token_matches(self, given: str | None) -> bool:
        """Whether ``given`` is the token (constant-time); ``True`` when no token is required."""
        if self.token is None:
            return True
        return given is not None and hmac.compare_digest(given.strip().encode(), self.token.encode())

    def require_write(self, what: str) -> None:
        """Refuse ``what`` (e.g. ``"Training"``) in read-only mode."""
        if self.read_only:
            raise AccessError(f"{what} is turned off: this dashboard was started read-only (--read-only)")

    @property
    def exposed(self) -> bool:
        """A token or read-only mode is in force (served beyond this machine, or chosen at launch)."""
        return self.token is not None or self.read_only


def announce(settings: ServeSettings, url: str, stream=None) -> None:
    """Print how to open the dashboard (with the token), as Jupyter does at start-up."""
    out = stream or sys.stderr
    if settings.token:
        print(f"\n  Gradient Flow Diagnostics needs a token. Open:\n    {url}/?token={settings.token}\n", file=out)
    if settings.read_only:
        print("  Read-only: no training, probes, typed checkpoint paths, rename or delete.\n", file=out)
    print(f"  Paths are confined to: {settings.roots.describe()}\n", file=out, flush=True)
