"""Host-side helpers of the local backend: the entry helper, processes, ports and pid files."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

_HELPER = Path(__file__).with_name("native") / "kriptik-enter"
_SOURCE = _HELPER.with_name("kriptik_enter.c")
_stale_warned = False


def enter_helper() -> str | None:
    """The compiled ``kriptik-enter`` (built by scripts/setup.sh), unless KRIPTIK_ENTER=shell asks for the chain.

    A binary older than its source may speak an older argument list (one without the
    seccomp filter): it is not used, and the slower shell chain, which filters too, runs.
    """
    global _stale_warned
    if os.environ.get("KRIPTIK_ENTER") == "shell" or not os.access(_HELPER, os.X_OK):
        return None
    with contextlib.suppress(OSError):
        if _HELPER.stat().st_mtime < _SOURCE.stat().st_mtime:
            if not _stale_warned:
                logger.warning("%s is older than its source (run scripts/setup.sh): using the shell chain", _HELPER)
                _stale_warned = True
            return None
    return str(_HELPER)


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
