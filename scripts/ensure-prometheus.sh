#!/usr/bin/env bash
# Make `promtool` and `prometheus` available (the Debian package `prometheus`): the alert-rule tests run
# promtool, the metrics tests a real Prometheus. Installs the package with apt-get when either is missing
# (needs root); waits first for an apt-get/dpkg run already under way rather than racing it. Prints
# progress on stderr only.
set -euo pipefail

have_both() { command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; }
say() { echo "ensure-prometheus: $*" >&2; }

# True while an apt or dpkg process runs (no pgrep/fuser needed: /proc is enough).
apt_busy() {
  local comm
  for comm in /proc/[0-9]*/comm; do
    case "$(cat "$comm" 2>/dev/null)" in
      apt | apt-get | aptitude | dpkg | unattended-upgr) return 0 ;;
    esac
  done
  return 1
}

wait_for_apt() {
  local waited=0 limit="${CRAWLDEX_APT_WAIT_SECONDS:-900}"
  while apt_busy; do
    if ((waited == 0)); then say "an apt-get/dpkg run is under way; waiting for it (up to ${limit}s)"; fi
    if ((waited >= limit)); then
      say "apt-get/dpkg still running after ${limit}s; giving up"
      return 1
    fi
    sleep 2
    waited=$((waited + 2))
  done
}

have_both && exit 0

# Another install (perhaps of this very package) may be running: let it finish, then look again.
wait_for_apt
have_both && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  say "promtool/prometheus not found and apt-get is not available on this machine."
  say "Install Prometheus 2.x (promtool and prometheus on PATH) by hand: https://prometheus.io/download/"
  exit 1
fi
if [[ "$(id -u)" != 0 ]]; then
  say "promtool/prometheus not found; installing them needs root:"
  say "  sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus"
  exit 1
fi

say "installing the Debian package prometheus (promtool, prometheus)"
# DPkg::Lock::Timeout makes apt wait for a lock another process took after our check.
apt-get -o DPkg::Lock::Timeout=600 update >&2
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends prometheus >&2

if ! have_both; then
  say "the prometheus package is installed but promtool or prometheus is still not on PATH ($PATH)"
  exit 1
fi
say "$(promtool --version 2>&1 | head -n 1)"
