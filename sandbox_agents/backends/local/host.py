"""Host-side helpers of the local backend: processes, ports and pid files."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path


def kill_pid(pid: int | None) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
