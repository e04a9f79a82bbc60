"""A fake Modal sandbox's "container": a /tmp of its own and, without egress, a network of its own.

On Modal every sandbox is a container: its ``/tmp`` is its own (two sandboxes of one build both
keep ``/tmp/kriptik-dev/8000.pid`` for their dev servers), two sandboxes may both serve port
5173, nothing on the client's host is reachable from inside, a declared port is reached from
outside only through its tunnel, and the container's end (terminate, timeout) ends every process
in it. The fake gives each sandbox a holder process that keeps a mount namespace, in which a
directory of the sandbox's own is bind-mounted on ``/tmp`` (when the sandbox's files are under the
host's ``/tmp`` themselves, as in tests, they are bound back at their own path on top); each exec
joins it with ``nsenter``. A sandbox created without egress (``block_network=True``, or an empty
``outbound_cidr_allowlist``: what the backend asks for every ``network: none`` sandbox) also gets
a network namespace (loopback only), and each declared port a tunnel of two ``socat``\\ s:
``127.0.0.1:HOST_PORT`` on the host to a unix socket, and that socket to ``127.0.0.1:PORT`` inside
(the local backend forwards the same way). A sandbox with egress shares the host's network; its
tunnels are its ports on the host.

The holder and its tunnels are one process group. The sandbox's processes are those in its mount
namespace: ending the sandbox (from any process of the user, with what its record holds) kills
them all — a dev server that left the exec's process group with ``setsid`` too — and then the
holder's group. The holder ends itself the same way at the sandbox's ``timeout``, so a sandbox a
test never ends does not outlive it. Root makes the namespaces directly; another user makes them
inside a user namespace of its own (``unshare --user --map-root-user``), which the execs join too.

Processes are started with :class:`subprocess.Popen` and ``close_fds=True``, never through the
event loop's subprocess support: on uvloop (Ray's default loop for async actors, which our Rays
turn off: ``actors/ray_local.RAY_ENV``) subprocesses inherit every file descriptor of the worker,
their own stdio pipes' duplicates included, so a server an exec leaves running would hold the
exec's output open for ever; the fake works the same on either loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: How long the namespaces and the tunnels may take to come up.
_READY_S = 10.0
_TOOLS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: Holders this process started and has not reaped yet (any process may end them).
_holders: dict[int, subprocess.Popen[bytes]] = {}

#: Run by the holder at the sandbox's timeout: kill every process in its mount namespace, then its group.
_SWEEP = (
    'me=$(readlink /proc/$$/ns/mnt); for p in /proc/[0-9]*; do n=${p#/proc/}; [ "$n" != $$ ] && '
    '[ "$(readlink $p/ns/mnt 2>/dev/null)" = "$me" ] && kill -9 "$n" 2>/dev/null; done; kill -9 0'
)


@dataclass
class Namespaces:
    """A sandbox's namespaces and tunnels, as its record keeps them."""

    holder: int
    """The process whose namespaces the execs join; it leads the process group of the tunnels too."""
    mount_ns: str
    """Its mount namespace (``mnt:[inode]``): every process in it belongs to the sandbox."""
    network: bool
    """Whether it has a network of its own (else the host's)."""
    tunnels: dict[int, int] = field(default_factory=dict)
    """Declared port → the host port that reaches it."""
    socket_dir: str = ""
    """The tunnels' unix sockets: a short temp dir (a socket path has at most 107 bytes)."""


def enter(namespaces: Namespaces, cwd: Path) -> list[str]:
    """The prefix that runs a command in the sandbox's namespaces, in ``cwd``."""
    kinds = ["--mount", "--net"] if namespaces.network else ["--mount"]
    if os.geteuid() != 0:
        kinds = ["--user", *kinds, "--preserve-credentials"]
    return [_tool("nsenter"), f"--target={namespaces.holder}", *kinds, f"--wd={cwd}"]


async def start(root: Path, *, own_network: bool, ports: Sequence[int], lifetime_s: int) -> Namespaces:
    """The namespaces of the sandbox whose files are under ``root``, its ``root/tmp`` on ``/tmp``.

    Args:
        own_network: A network namespace too, with a tunnel per port; else the host's network.
        lifetime_s: The sandbox's ``timeout``: the holder ends everything of it then.

    Raises:
        RuntimeError: the namespaces or a tunnel did not come up (what was started is ended).
    """
    unshare = [_tool("unshare"), "--mount"] + (["--net"] if own_network else [])
    if os.geteuid() != 0:
        unshare[1:1] = ["--user", "--map-root-user"]
    real, tmp, ready = os.path.realpath(root), root / "tmp", root / "namespaces-ready"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    socket_dir = tempfile.mkdtemp(prefix="fake-modal-") if own_network and ports else ""
    tunnels = {port: _free_port() if own_network else port for port in ports}
    outside, inside = [], []  # the host's ends of the tunnels, and the namespace's
    for port, host_port in tunnels.items() if own_network else ():
        sock = shlex.quote(f"{socket_dir}/{port}.sock")
        outside.append(f"{_tool('socat')} TCP-LISTEN:{host_port},bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{sock} &")
        inside.append(f"{_tool('socat')} UNIX-LISTEN:{sock},fork,mode=600 TCP:127.0.0.1:{port} &")
        inside.append(f"while [ ! -S {sock} ]; do sleep 0.005; done")
    if own_network:
        inside.insert(0, f"{_tool('ip')} link set lo up")
    # The tunnels' sockets are made before /tmp is covered, so the host's ends still reach them.
    mount, here = _tool("mount"), shlex.quote(real)
    inside.append(f"{mount} --bind {shlex.quote(str(tmp))} /tmp")
    if os.path.commonpath([real, os.path.realpath("/tmp")]) == os.path.realpath("/tmp"):
        # The sandbox's own files would be hidden under the new /tmp: bind them back (from an fd
        # opened before, as their path now names the new /tmp's directory) at their own path.
        inside[-1:-1] = [f"exec 3<{here}"]
        inside += [f"mkdir -p {here}", f"{mount} --no-canonicalize --bind /proc/self/fd/3 {here}", "exec 3<&-"]
    inside += [f": > {shlex.quote(str(ready))}", f"sleep {int(lifetime_s)}", "set +e", _SWEEP]
    holder_script = "set -e\n" + "\n".join(inside)
    script = "\n".join([*outside, f'exec {shlex.join(unshare)} /bin/sh -c "$0"'])
    holder = _spawn(["/bin/sh", "-c", script, holder_script])
    namespaces = Namespaces(holder=holder.pid, mount_ns="", network=own_network, tunnels=tunnels, socket_dir=socket_dir)
    try:
        await _until(lambda: ready.exists() or holder.poll() is not None, "the sandbox's namespaces")
        if not ready.exists():
            raise RuntimeError("fake modal: the sandbox's namespaces did not come up")
        namespaces.mount_ns = os.readlink(f"/proc/{holder.pid}/ns/mnt")
        open_ports = [host_port for host_port in tunnels.values()] if own_network else []
        await _until(lambda: all(_listening(host_port) for host_port in open_ports), "the sandbox's tunnels")
    except BaseException:
        stop(namespaces, force=True)
        raise
    return namespaces


def stop(namespaces: Namespaces, *, force: bool = False) -> None:
    """End every process of the sandbox, then its holder and tunnels, and drop the sockets (any process).

    Only while the holder still holds the namespace (``force``: it is being started): once it is
    gone it has ended everything itself, and its pid, group and namespace may be someone else's.
    """
    with contextlib.suppress(OSError):
        if force or os.readlink(f"/proc/{namespaces.holder}/ns/mnt") == namespaces.mount_ns:
            for pid in _members(namespaces.mount_ns) if namespaces.mount_ns else ():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            os.killpg(namespaces.holder, signal.SIGKILL)
    if namespaces.socket_dir:
        shutil.rmtree(namespaces.socket_dir, ignore_errors=True)
    _reap()


def _members(mount_ns: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry.name}/ns/mnt") == mount_ns:
                    found.append(int(entry.name))
    return found


class Process:
    """An exec's local process: its pipes on the running event loop, its end as an awaitable."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout: asyncio.StreamReader, stderr: asyncio.StreamReader,
                 stdin: PipeWriter, exited: asyncio.Future[None]) -> None:  # fmt: skip
        self._popen = popen
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        self._exited = exited

    @property
    def pid(self) -> int:
        return self._popen.pid

    async def wait(self) -> int:
        """The exit code (negative: the signal that ended it), once the process has ended."""
        await asyncio.shield(self._exited)
        return self._popen.wait()


async def start_process(argv: Sequence[str], *, cwd: Path, env: dict[str, str]) -> Process:
    """Start ``argv`` in a process group of its own, with pipes for stdin, stdout and stderr.

    The pipes' parent ends are plain descriptors this module reads and writes with ``add_reader``
    and ``add_writer`` and closes exactly once. Not ``loop.connect_read_pipe``/``connect_write_pipe``:
    uvloop's pipe transports close the descriptor twice (libuv, then the file object; uvloop issue
    763), and a number another thread of the actor took in between is closed under its owner (a
    build on the fake failed once with ``OSError: [Errno 9] Bad file descriptor``).
    """
    loop = asyncio.get_running_loop()
    (in_read, in_write), (out_read, out_write), (err_read, err_write) = (os.pipe2(os.O_CLOEXEC) for _ in range(3))
    try:
        popen = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=in_read, stdout=out_write, stderr=err_write,
            close_fds=True, start_new_session=True,
        )  # fmt: skip
    except BaseException:
        for fd in (in_write, out_read, err_read):
            os.close(fd)
        raise
    finally:
        for fd in (in_read, out_write, err_write):  # the child's ends: it has its own copies now
            os.close(fd)
    return Process(popen, _reader(loop, out_read), _reader(loop, err_read), PipeWriter(loop, in_write),
                   _exit_of(loop, popen.pid))  # fmt: skip


def _reader(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    """A stream of what arrives on ``fd``, read as it comes until the end of file, which closes ``fd``.

    Read eagerly, without back-pressure: every exec's output is drained by the backend, and reading
    to the end is what closes the descriptor even when nobody is listening any more.
    """
    reader = asyncio.StreamReader()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            loop.remove_reader(fd)
            os.close(fd)
            reader.set_exception(exc)
            return
        if data:
            reader.feed_data(data)
            return
        loop.remove_reader(fd)
        os.close(fd)
        reader.feed_eof()

    loop.add_reader(fd, readable)
    return reader


class PipeWriter:
    """The parent's end of a child's stdin: ``write_all`` waits until every byte is in the pipe."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        os.set_blocking(fd, False)
        self._loop = loop
        self._fd = fd
        self._waiter: asyncio.Future[None] | None = None

    async def write_all(self, data: bytes) -> None:
        """Write ``data``; BrokenPipeError when the child closed its stdin or the pipe was closed here."""
        view = memoryview(data)
        while view:
            if self._fd < 0:
                raise BrokenPipeError("stdin is closed")
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await self._writable(self._fd)

    async def _writable(self, fd: int) -> None:
        waiter = self._loop.create_future()
        self._waiter = waiter

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self._loop.add_writer(fd, ready)
        try:
            await waiter
        finally:
            self._waiter = None
            if self._fd == fd:
                self._loop.remove_writer(fd)

    def close(self) -> None:
        """Close the pipe (the child reads the end of its input); a write that waits gets BrokenPipeError."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        if self._waiter is not None:
            self._loop.remove_writer(fd)
            if not self._waiter.done():
                self._waiter.set_exception(BrokenPipeError("stdin is closed"))
        os.close(fd)


def _exit_of(loop: asyncio.AbstractEventLoop, pid: int) -> asyncio.Future[None]:
    """Resolved when ``pid`` (a child) has ended: its pidfd becomes readable (uvloop watches fds too)."""
    exited: asyncio.Future[None] = loop.create_future()
    pidfd = os.pidfd_open(pid)

    def ended() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, ended)
    return exited


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a holder in a process group of its own; this process reaps it later, whoever ends it."""
    _reap()
    popen = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        close_fds=True, start_new_session=True,
    )  # fmt: skip
    _holders[popen.pid] = popen
    return popen


def _reap() -> None:
    for pid, popen in list(_holders.items()):
        if popen.poll() is not None:
            del _holders[pid]


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _READY_S
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"fake modal: {what} did not come up within {_READY_S}s")
        await asyncio.sleep(0.005)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tool(name: str) -> str:
    path = shutil.which(name, path=_TOOLS_PATH)
    if path is None:
        raise RuntimeError(f"fake modal: {name} is needed for a sandbox's namespaces")
    return path
