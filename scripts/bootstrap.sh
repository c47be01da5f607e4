#!/usr/bin/env bash
# Install everything the project needs into .venv, from uv.lock. Safe to run again (it is a no-op
# when nothing changed). Needs python3 (3.11) and pip; installs uv with pip if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if ! command -v uv >/dev/null 2>&1; then
  echo "bootstrap: installing uv ${UV_VERSION}" >&2
  python3 -m pip install --quiet "uv==${UV_VERSION}"
fi
# --frozen: install exactly what uv.lock says; --all-extras: the in-process model too.
uv sync --frozen --all-extras --all-packages --quiet
