#!/usr/bin/env bash
# Installs what KripTik Fleet needs on a fresh Debian machine (run as root):
# the Debian tools the local sandboxes, the bus and the visual checks use, then the
# Python package with its dev extras. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in bwrap:bubblewrap redis-server:redis-server chromium:chromium zstd:zstd \
            socat:socat nsenter:util-linux git:git slirp4netns:slirp4netns nft:nftables gcc:gcc \
            ip:iproute2 node:nodejs npm:npm; do
  cmd="${pair%%:*}"; pkg="${pair##*:}"
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# libseccomp compiles the sandboxes' syscall filter (through ctypes; no headers needed).
ldconfig -p | grep 'libseccomp\.so\.2' >/dev/null || need+=(libseccomp2)
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# The one-exec sandbox entry helper (the backend falls back to nsenter + setpriv without it).
native=sandbox_agents/backends/local/native
if [ ! -x "$native/kriptik-enter" ] || [ "$native/kriptik_enter.c" -nt "$native/kriptik-enter" ]; then
  gcc -O2 -Wall -o "$native/kriptik-enter" "$native/kriptik_enter.c"
fi
python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
