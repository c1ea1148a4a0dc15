#!/usr/bin/env bash
# Set up (idempotent) and run: `bash dev.sh app` starts the dashboard (`--token` or `--read-only` to share it,
# see the README), `bash dev.sh test` runs every test.
# Setup: a virtual environment in .venv, installed from requirements-dev.txt (which includes
# requirements.txt) and the project itself in editable mode; redone only when a requirements file changes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3 python; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "dev.sh: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

setup() {
  if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
  fi
  local stamp
  stamp=".venv/.installed-$(cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "dev.sh: installing dependencies into .venv (the first time takes a few minutes: PyTorch is large)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements-dev.txt
    .venv/bin/python -m pip install -q --no-deps -e .
    # The monitor's fused CPU reductions: a C++ extension built once per PyTorch version (about half a minute),
    # here rather than inside the first training step; without a C++ compiler the monitor uses PyTorch reductions.
    .venv/bin/python -m diagnostics build || echo "dev.sh: fused reductions unavailable; PyTorch reductions are used"
    rm -f .venv/.installed-*
    touch "$stamp"
  fi
}

command="${1:-}"
shift || true
case "$command" in
  app)
    setup
    # Served on 127.0.0.1 only (see .streamlit/config.toml); the README says how to expose it. The launcher
    # takes --token, --read-only, --root DIR, --store DIR and --allow-host NAME and passes the rest to streamlit.
    exec .venv/bin/python -m diagnostics.serving "$@"
    ;;
  test)
    setup
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: bash dev.sh app [--token|--read-only] [--root DIR] [--allow-host NAME] [streamlit options]" \
         "| bash dev.sh test [pytest options]" >&2
    exit 2
    ;;
esac
