"""Host-side helpers of the local backend: processes, ports and pid files."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path


def kill_pid(pid: int | None, *marks: str) -> None:
    """SIGKILL ``pid`` — only while its command line holds every one of ``marks``.

    A recorded pid outlives its process: once that process is gone the kernel hands the number to
    another one (a test runner, a shell). The marks (a sandbox's own paths) keep a kill to the
    process that was recorded.
    """
    if pid and (not marks or runs(pid, *marks)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def runs(pid: int, *marks: str) -> bool:
    """Whether ``pid`` is a live process whose command line holds every one of ``marks``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return bool(cmdline) and all(mark in cmdline for mark in marks)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    delay = 0.001
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return False


def wait_pidfile(path: Path, timeout_s: float = 5.0) -> int | None:
    found: list[int] = []

    def check() -> bool:
        with contextlib.suppress(OSError, ValueError):
            found.append(int(path.read_text()))
            return True
        return False

    wait_for(check, timeout_s)
    return found[0] if found else None
