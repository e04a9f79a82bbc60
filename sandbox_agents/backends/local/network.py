"""Outbound network for a local sandbox: slirp4netns behind an nftables filter in its namespace.

A sandbox starts with a network namespace of its own holding only ``lo``. Under ``full`` or
``install`` the host gives it a ``tap0`` through slirp4netns, a user-mode TCP/IP stack on the
host that turns the sandbox's packets into ordinary host sockets:

- slirp4netns joins the namespace by path (``--netns-type=path``), as root of the host. Joined
  by pid it would first enter the sandbox's user namespace, where it has no right over the
  network namespace bwrap made in the outer one (``setns(CLONE_NEWNET): EPERM``).
- Its start is confirmed on ``--ready-fd``; a failure is an error of the caller, with slirp's
  own output, never a sandbox that silently has no network.
- Its ``--exit-fd`` is a fifo the sandbox's launcher holds open for as long as the sandbox
  lives: when the launcher ends (terminate, TTL, a killed host process), slirp4netns sees
  the hang-up and exits. Nothing of the network outlives the sandbox.

The filter is an nftables table in the sandbox's own namespace, put there before slirp4netns
starts (no moment without it). The sandbox's processes have no capability in that namespace
(bwrap drops them all and forbids new user namespaces), so they cannot change it. It refuses:

- the host's loopback (slirp4netns's ``--disable-host-loopback`` as well) and the host's own
  addresses and connected networks;
- every private, shared, link-local (cloud metadata, 169.254.169.254), multicast and reserved
  range;
- under ``install``, every destination but the resolved addresses of the named package
  registries on port 443.

DNS goes to slirp4netns's resolver (10.0.2.3), which asks the host's. IPv6 is not offered.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from sandbox_agents.backends.base import NetworkPolicy
from sandbox_agents.errors import BackendUnavailableError, SandboxError

#: slirp4netns's resolver inside the sandbox (``--cidr`` default 10.0.2.0/24).
DNS = "10.0.2.3"

#: Ranges no sandbox reaches: "this" network, private, shared (CGNAT), loopback, link-local
#: (cloud metadata), IETF protocol assignments, benchmarking, multicast, reserved, broadcast.
DENIED_V4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)

#: Registries each package manager reaches during an install (port 443).
DEFAULT_REGISTRIES: dict[str, tuple[str, ...]] = {
    "npm": ("registry.npmjs.org",),
    "pip": ("pypi.org", "files.pythonhosted.org"),
}

#: The fifo the launcher holds open for the sandbox's life (slirp4netns's exit fd).
LIFELINE = "life.fifo"


def check_network_tools() -> None:
    """Fail with a clear error when a tool the sandbox network needs is missing."""
    missing = [tool for tool in ("slirp4netns", "nft") if shutil.which(tool) is None]
    if missing:
        raise BackendUnavailableError(
            f"sandbox network needs {', '.join(missing)} (Debian: apt-get install slirp4netns nftables); "
            "run scripts/setup.sh",
            backend="local",
        )


def host_networks() -> list[str]:
    """The host's own IPv4 addresses and connected networks (``ip -j addr``), as CIDRs."""
    proc = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=False)
    found: set[str] = set()
    with contextlib.suppress(ValueError, TypeError):
        for link in json.loads(proc.stdout or "[]"):
            for addr in link.get("addr_info", []):
                iface = ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}")
                found.add(str(iface.network))
                found.add(f"{iface.ip}/32")
    return sorted(found)


def resolve(hosts: Iterable[str]) -> list[str]:
    """IPv4 addresses of ``hosts`` as the host resolves them now (what slirp's resolver answers too)."""
    addresses: set[str] = set()
    for host in hosts:
        with contextlib.suppress(OSError):
            for info in socket.getaddrinfo(host, 443, socket.AF_INET, socket.SOCK_STREAM):
                addresses.add(str(info[4][0]))
    return sorted(addresses)


def ruleset(policy: NetworkPolicy, *, allowed: Iterable[str] = (), host: Iterable[str] = ()) -> str:
    """The nftables table for a sandbox's namespace under ``policy`` (``allowed``: install's addresses)."""
    denied = ", ".join(sorted({*DENIED_V4, *host}))
    lines = [
        "table inet kriptik {",
        "  chain output {",
        f"    type filter hook output priority 0; policy {'accept' if policy is NetworkPolicy.FULL else 'drop'};",
        '    oifname "lo" accept',
        f"    ip daddr {DNS} udp dport 53 accept",
        f"    ip daddr {DNS} tcp dport 53 accept",
        "    meta nfproto ipv6 reject",
        f"    ip daddr {{ {denied} }} reject with icmp type admin-prohibited",
    ]
    if policy is NetworkPolicy.INSTALL:
        registry = ", ".join(sorted(set(allowed)))
        if registry:
            lines.append(f"    ip daddr {{ {registry} }} tcp dport 443 accept")
        lines.append("    ip protocol tcp reject with tcp reset")
        lines.append("    reject with icmpx type admin-prohibited")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def apply_filter(netns_pid: int, rules: str) -> None:
    """Load ``rules`` into the network namespace of ``netns_pid`` (replacing any earlier table)."""
    netns = f"/proc/{netns_pid}/ns/net"
    script = "table inet kriptik\ndelete table inet kriptik\n" + rules
    proc = subprocess.run(
        ["nsenter", f"--net={netns}", "nft", "-f", "-"], input=script, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SandboxError(f"could not load the sandbox's network filter: {proc.stderr.strip() or proc.returncode}")


def make_lifeline(ctl_dir: Path) -> Path:
    """The fifo whose hang-up ends the sandbox's network helpers (the launcher opens it)."""
    path = ctl_dir / LIFELINE
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.mkfifo(path, 0o600)
    return path


def start_slirp(netns_pid: int, ctl_dir: Path, *, timeout_s: float = 10.0) -> int:
    """Start slirp4netns for the namespace of ``netns_pid``; returns its pid once ``tap0`` is up.

    It runs in a session of its own (no Ray worker owns it) and ends when the sandbox's
    launcher closes the lifeline fifo.

    Raises:
        SandboxError: it did not come up; the message carries slirp4netns's output.
    """
    lifeline = ctl_dir / LIFELINE
    if not lifeline.exists() or not stat.S_ISFIFO(lifeline.stat().st_mode):
        raise SandboxError("the sandbox has no lifeline for its network (started before networking existed?)")
    log = ctl_dir / f"slirp-{time.monotonic_ns()}.log"
    # Non-blocking open of the read end: the launcher holds the write end, so this never waits.
    exit_fd = os.open(lifeline, os.O_RDONLY | os.O_NONBLOCK)
    os.set_blocking(exit_fd, True)
    ready_r, ready_w = os.pipe()
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    "slirp4netns",
                    "--configure",
                    "--mtu=65520",
                    "--disable-host-loopback",
                    "--netns-type=path",
                    f"--ready-fd={ready_w}",
                    f"--exit-fd={exit_fd}",
                    f"/proc/{netns_pid}/ns/net",
                    "tap0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=(ready_w, exit_fd),
                start_new_session=True,
            )
    finally:
        os.close(ready_w)
        os.close(exit_fd)
    try:
        ready = _read_ready(ready_r, proc, timeout_s)
    finally:
        os.close(ready_r)
    if not ready:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        detail = log.read_text(errors="replace").strip()[-2000:] or f"exit code {proc.returncode}"
        raise SandboxError(f"slirp4netns did not bring up the sandbox's network: {detail}")
    _reap_later(proc)
    return proc.pid


def _read_ready(fd: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    import select

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        readable, _, _ = select.select([fd], [], [], min(0.1, max(0.0, end - time.monotonic())))
        if readable:
            return os.read(fd, 1) == b"1"
        if proc.poll() is not None:
            return False
    return False


def _reap_later(proc: subprocess.Popen[bytes]) -> None:
    """Keep no zombie: a daemon thread waits for slirp4netns (it ends with the sandbox)."""
    import threading

    threading.Thread(target=proc.wait, name=f"slirp-{proc.pid}", daemon=True).start()
