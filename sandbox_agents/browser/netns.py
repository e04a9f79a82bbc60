"""A network namespace for one browser, made and held by this process without a helper.

A fresh OS thread unshares its network namespace (the call changes only the calling
thread), brings ``lo`` up, binds the gate's listening socket there and opens the
namespace's file; then the thread ends. A socket stays in the namespace it was created
in, so the event loop serves the gate from the host while the browser, which joins the
namespace through ``/proc/<our pid>/fd/<fd>``, sees that socket and nothing else.

Nothing outlives its owners: the namespace is gone once this file is closed and the
browser's processes have exited; no process of ours runs in it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

from sandbox_agents.errors import BackendUnavailableError

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sh22x"  # struct ifreq on Linux x86-64/arm64: name, then flags in a 24-byte union

T = TypeVar("T")


class BrowserNetns:
    """One network namespace holding a listening socket on ``127.0.0.1:port``.

    Construct with :meth:`create` (root only: ``unshare(CLONE_NEWNET)`` needs CAP_SYS_ADMIN).
    """

    def __init__(self, fd: int, listener: socket.socket) -> None:
        self.fd = fd
        self.listener = listener

    @classmethod
    def create(cls, port: int) -> BrowserNetns:
        """A new namespace with ``lo`` up and a socket listening on ``127.0.0.1:port`` in it.

        Blocks for about a millisecond (a thread start); call it off the event loop.

        Raises:
            BackendUnavailableError: the kernel refused a network namespace (not root).
        """

        def inside() -> BrowserNetns:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                error = ctypes.get_errno()
                raise BackendUnavailableError(
                    f"cannot make a network namespace for the browser: {os.strerror(error)}", backend="browser"
                )
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _loopback_up()
                listener = socket.create_server(("127.0.0.1", port), backlog=128)
            except BaseException:
                os.close(fd)
                raise
            return cls(fd, listener)

        return _in_fresh_thread(inside)

    @property
    def path(self) -> str:
        """A path that names this namespace to ``nsenter --net=`` while this process lives."""
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    def close(self) -> None:
        """Close the listener and let go of the namespace; safe to call twice."""
        self.listener.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0)))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def _in_fresh_thread(work: Callable[[], T]) -> T:
    """Run ``work`` in a new OS thread that ends with it: its namespace changes die with it.

    Never a pool thread: one left in the browser's namespace would run later work there.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="kriptik-browser-netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
