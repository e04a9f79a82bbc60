#!/usr/bin/env bash
# Installs what KripTik Fleet needs on a fresh Debian machine (run as root):
# the Debian tools the local sandboxes, the bus and the visual checks use, then the
# Python package with its dev extras. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in bwrap:bubblewrap redis-server:redis-server chromium:chromium zstd:zstd \
            socat:socat nsenter:util-linux git:git slirp4netns:slirp4netns; do
  cmd="${pair%%:*}"; pkg="${pair##*:}"
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if ! python3 -c "import kriptik_fleet_marker" 2>/dev/null; then :; fi
python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
