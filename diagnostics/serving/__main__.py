"""Start the dashboard with its sharing options: ``python -m diagnostics.serving [options] [streamlit options]``.

``bash dev.sh app`` runs this. Options of its own (the rest go to ``streamlit run``):

- ``--token [TOKEN]``: every visitor must give the token (one is made up when none is given); it is printed
  here with the URL to open, as Jupyter does. Served beyond loopback without ``--read-only``, this is the default.
- ``--read-only``: no training, probes, typed checkpoint paths, rename or delete.
- ``--root DIR`` (repeatable): the folders paths may lie in (default: the store folder and this folder).
- ``--store DIR``: the run store (default ``$GFD_STORE`` or ``runs``).
- ``--allow-host NAME`` (repeatable): a ``Host`` name to serve besides this machine's names and IP addresses
  (the name of a reverse proxy, ``*.example.com``); Streamlit then also refuses WebSockets for other names.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import tomllib
from pathlib import Path

from .access import ServeSettings, announce, is_loopback


def _option(rest: list[str], name: str) -> str | None:
    """The value of a ``--name value`` or ``--name=value`` streamlit option, if given."""
    for i, arg in enumerate(rest):
        if arg == name and i + 1 < len(rest):
            return rest[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _configured(section: str, key: str) -> object:
    """A value of ``.streamlit/config.toml`` in this folder, if set."""
    path = Path(".streamlit/config.toml")
    if not path.is_file():
        return None
    return tomllib.loads(path.read_text()).get(section, {}).get(key)


def _addresses(address: str) -> list[str]:
    """The IP addresses visitors may use for this machine: the one served on, and those its name resolves to."""
    found = [address] if address and address not in ("0.0.0.0", "::") else []
    try:
        found += sorted({str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)})
    except OSError:
        pass                                # no resolvable name: the loopback addresses and names still pass
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diagnostics.serving", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--token", nargs="?", const="", default=None, help="require a token (made up if empty)")
    parser.add_argument("--read-only", action="store_true", help="no training, probes, typed paths, rename/delete")
    parser.add_argument("--root", action="append", default=[], help="a folder paths may lie in (repeatable)")
    parser.add_argument("--store", default=os.environ.get("GFD_STORE", "runs"), help="the run store")
    parser.add_argument("--allow-host", action="append", default=[], help="a Host name to serve (repeatable)")
    args, rest = parser.parse_known_args(argv)
    address = _option(rest, "--server.address")
    if address is None:
        address = str(_configured("server", "address") or "")      # Streamlit's default "" is every interface
    port = _option(rest, "--server.port") or str(_configured("server", "port") or 8501)
    token = args.token if args.token else (secrets.token_urlsafe(24) if args.token == "" else None)
    env = {**os.environ, "GFD_STORE": args.store}
    if token:
        env["GFD_TOKEN"] = token
    if args.read_only:
        env["GFD_READ_ONLY"] = "1"
    if args.root:
        env["GFD_ROOTS"] = os.pathsep.join(args.root)
    if args.allow_host:
        env["GFD_ALLOWED_HOSTS"] = ",".join(args.allow_host)
    settings = ServeSettings.from_env(env, address)
    if settings.token_generated:
        env["GFD_TOKEN"] = settings.token or ""
    extra = []
    if settings.exposed:
        extra += ["--client.showErrorDetails", "type"]             # no tracebacks (server paths) for visitors
    if args.allow_host:                     # Streamlit's own check has no "any IP address": list this machine's
        names = [*settings.allowed_hosts, *_addresses(address)]
        for name in dict.fromkeys(names):
            extra += ["--server.allowedHosts", name]
    shown = "localhost" if is_loopback(address) else (address if address not in ("", "0.0.0.0", "::")
                                                       else socket.gethostname())
    announce(settings, f"http://{shown}:{port}")
    command = [sys.executable, "-m", "streamlit", "run", "app.py", *rest, *extra]
    os.execve(sys.executable, command, env)
    return 0                                                         # not reached: execve replaces this process


if __name__ == "__main__":
    raise SystemExit(main())
