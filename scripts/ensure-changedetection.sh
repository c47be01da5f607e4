#!/usr/bin/env bash
# The real changedetection.io, for the e2e test, in a virtualenv of its own (it is large and pins its own
# dependencies): .tools/changedetection-venv. Prints the path of its `changedetection.io` command.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.60.10
VENV=.tools/changedetection-venv
if [ ! -x "$VENV/bin/changedetection.io" ] || ! "$VENV/bin/pip" show changedetection.io 2>/dev/null | grep -q "^Version: $VERSION$"; then
  echo "ensure-changedetection: installing changedetection.io $VERSION into $VENV" >&2
  rm -rf "$VENV"
  mkdir -p .tools
  python3 -m venv "$VENV"
  if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check "changedetection.io==$VERSION" \
      > .tools/changedetection-install.log 2>&1; then
    tail -30 .tools/changedetection-install.log >&2
    exit 1
  fi
fi
echo "$PWD/$VENV/bin/changedetection.io"
