"""A same-host side channel for a SandboxProxy's ``exec``: a unix socket served by the proxy's process.

Why: an ``exec`` is the hot path of every agent, check and verifier, and on these machines a
Ray actor call for a method that runs ~3 ms costs 2.4–3.4 ms on top (a bare actor, no proxy
logic), against ~0.3 ms for one request over a unix socket between the same two processes.
So the proxy also serves ``exec`` on a socket, in its own event loop and through its own
``exec`` method (same metering, TTL heartbeat and validation); :class:`ProxySandbox` uses it
when the proxy runs on the caller's host, and the Ray call otherwise or when the channel is
gone (the proxy restarted: the next call asks for the new one). Everything else, streaming
included, stays on Ray.

Protocol: frames of a 4-byte big-endian length and a msgpack map. The client's first frame is
``{"token": <hex>}`` (a secret the proxy hands out through Ray, new per incarnation; the socket
sits in a 0700 directory, mode 0600). Each later frame is one request
``{"command", "cwd", "env", "timeout", "stdin"}``, answered by ``{"ok": <ExecResult fields>}``
or ``{"error": <the pickled exception>}`` (our errors pickle with their fields). One request at
a time per connection; a client keeps a few connections for concurrent callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import pickle
import secrets
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
from pydantic import BaseModel, ConfigDict, ValidationError

from sandbox_agents.backends.base import ExecResult
from sandbox_agents.errors import InvalidInputError, SandboxError

logger = logging.getLogger(__name__)

STALE_AFTER_S = 60.0
"""A socket at least this old that refuses connections belongs to a dead proxy (see :func:`sweep_stale`)."""
MAX_FRAME = 64 * 1024 * 1024
"""Largest frame either side accepts (an answer holds at most two 8 MiB output streams)."""
_LEN = struct.Struct(">I")

#: The proxy's ``exec``: ``(command, cwd, env, timeout, stdin) -> ExecResult``.
ExecFn = Callable[..., Awaitable[ExecResult]]

_SHARED: dict[tuple[str, str], tuple[asyncio.AbstractEventLoop, ExecChannelClient]] = {}
"""(socket path, token) → the loop and the client of :meth:`ExecChannelClient.shared`."""


class ChannelInfo(BaseModel):
    """Where and how to reach one proxy's channel (what ``SandboxProxy.exec_channel`` answers)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    token: str
    host: str
    """:func:`host_id` of the proxy's machine: the channel is only for callers on the same one."""


class ExecArgs(BaseModel):
    """One exec request on the channel (the backend validates the values themselves)."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] | str
    cwd: str | None = None
    env: dict[str, str] | None = None
    timeout: float | None = None
    stdin: str | bytes | None = None


class ChannelUnavailableError(ConnectionError):
    """The channel cannot take a request (gone, refused, closed): use the Ray call instead.

    Raised only when the request was not sent, so falling back never runs a command twice.
    """


def host_id() -> str:
    """This machine and boot (hostname and kernel boot id): equal only on the same running host."""
    with contextlib.suppress(OSError):
        return f"{socket.gethostname()}/{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}"
    return socket.gethostname()


def channel_path(name: str) -> Path:
    """The socket of the proxy named ``name`` (short: a unix socket path is at most 107 bytes)."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"kriptik-exec-{os.geteuid()}" / f"{digest}.sock"


def _private_dir(path: Path) -> None:
    """Create ``path`` 0700, or accept it only if it is a real directory of ours that nobody else can enter.

    It lives in a shared temp dir: one that another user made first (or a symlink to elsewhere)
    would let them swap our socket for theirs and read the token.

    Raises:
        SandboxError: ``path`` exists but is not ours alone.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise SandboxError(f"exec channel directory {path} is not a private directory of uid {os.geteuid()}")


def sweep_stale(directory: Path, *, older_than_s: float = STALE_AFTER_S) -> int:
    """Remove the sockets of proxies that died without closing them (killed actors); returns how many.

    Only sockets older than ``older_than_s`` that refuse a connection go: a live server listens
    from the moment its socket exists, so a young one may just be starting.
    """
    removed = 0
    now = time.time()
    for path in directory.glob("*.sock"):
        try:
            if now - path.lstat().st_mtime < older_than_s:
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.2)
                probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if size > MAX_FRAME:
        raise InvalidInputError(f"exec channel frame of {size} bytes is over {MAX_FRAME}", field="frame")
    return msgpack.unpackb(await reader.readexactly(size), raw=False)


def _frame(data: Any) -> bytes:
    body: bytes = msgpack.packb(data, use_bin_type=True)
    return _LEN.pack(len(body)) + body


class ExecChannelServer:
    """Serves ``exec_fn`` on a unix socket in the current event loop (the proxy's).

    Args:
        path: The socket (its directory is created 0700; a stale socket there is replaced).
        exec_fn: The proxy's ``exec``.
    """

    def __init__(self, path: Path, exec_fn: ExecFn) -> None:
        self.path = path
        self._exec = exec_fn
        self._token = secrets.token_hex(16)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> ChannelInfo:
        """Listen (idempotent); returns what a client needs."""
        if self._server is None:
            _private_dir(self.path.parent)
            sweep_stale(self.path.parent)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # a previous incarnation's: its token is void anyway
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
            os.chmod(self.path, 0o600)
        return ChannelInfo(path=str(self.path), token=self._token, host=host_id())

    async def close(self) -> None:
        """Stop listening and drop every connection (their callers fall back to Ray)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        for writer in list(self._connections):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            hello = await _read_frame(reader)
            token = hello.get("token") if isinstance(hello, dict) else None
            if not isinstance(token, str) or not hmac.compare_digest(token, self._token):
                logger.warning("exec channel %s: a connection with a wrong token was refused", self.path)
                return
            writer.write(_frame({"ok": True}))
            await writer.drain()
            while True:
                request = await _read_frame(reader)
                writer.write(_frame(await self._answer(request)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        except Exception:  # noqa: BLE001 - a broken frame ends this connection, never the proxy
            logger.warning("exec channel %s: dropping a connection", self.path, exc_info=True)
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):  # the transport's own error: the client already went away
                await writer.wait_closed()

    async def _answer(self, request: Any) -> dict[str, Any]:
        try:
            if not isinstance(request, dict):
                raise InvalidInputError("an exec request must be a map", field="request")
            try:
                args = ExecArgs.model_validate(request)
            except ValidationError as exc:
                raise InvalidInputError(f"bad exec request: {exc}", field="request") from exc
            result = await self._exec(args.command, args.cwd, args.env, args.timeout, args.stdin)
            return {"ok": result.model_dump(mode="python")}
        except Exception as exc:  # noqa: BLE001 - every failure is the caller's answer, as over Ray
            try:
                return {"error": pickle.dumps(exc)}
            except Exception:  # noqa: BLE001 - an exception that does not pickle still gets its text across
                return {"error": pickle.dumps(SandboxError(f"{type(exc).__name__}: {exc}"))}


class ExecChannelClient:
    """A caller's side of one proxy's channel: a few connections, one request on each at a time.

    Use :meth:`shared`: one client per proxy incarnation and event loop, so a process that makes
    many ``ProxySandbox`` objects for one proxy (a swarm run, a preview call) keeps at most
    ``max_idle`` connections to it, not a few per object.

    Args:
        info: What the proxy answered.
        max_idle: Connections kept open between calls.
    """

    @classmethod
    def shared(cls, info: ChannelInfo) -> ExecChannelClient:
        """This loop's client for ``info`` (a new one when there is none, or it was closed)."""
        loop = asyncio.get_running_loop()
        key = (info.path, info.token)
        held = _SHARED.get(key)
        if held is not None and held[0] is loop and not held[1]._closed:
            return held[1]
        for stale in [k for k, (lp, c) in _SHARED.items() if c._closed or lp.is_closed()]:
            del _SHARED[stale]
        client = cls(info)
        _SHARED[key] = (loop, client)
        return client

    def __init__(self, info: ChannelInfo, *, max_idle: int = 4) -> None:
        self.info = info
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._max_idle = max_idle
        self._closed = False

    @staticmethod
    def usable(info: ChannelInfo) -> bool:
        """True when the channel is on this host (same machine and boot) and its socket exists."""
        return info.host == host_id() and os.path.exists(info.path)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection with the token sent; the proxy's greeting is read with the first answer.

        The first request goes out right behind the token (one round trip, not two): a proxy
        that refuses the token closes the connection before reading anything else, so "no
        greeting" always means "nothing ran".
        """
        try:
            reader, writer = await asyncio.open_unix_connection(self.info.path, limit=MAX_FRAME + 16)
        except OSError as exc:  # gone (the proxy restarted or was released)
            raise ChannelUnavailableError(f"exec channel {self.info.path}: {exc!r}") from exc
        writer.write(_frame({"token": self.info.token}))
        return reader, writer

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A connection to send on, and whether it is new (its greeting still to be read)."""
        if self._idle:  # let the loop see a close that already happened (two turns: select, then callbacks)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer, False
            writer.close()  # the proxy closed it (restarted, or stopped serving)
        reader, writer = await self._connect()
        return reader, writer, True

    async def _greeted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            greeting = await _read_frame(reader)
        except (OSError, asyncio.IncompleteReadError) as exc:  # refused (a past incarnation's token) or gone
            writer.close()
            raise ChannelUnavailableError(f"exec channel {self.info.path}: {exc!r}") from exc
        if greeting != {"ok": True}:
            writer.close()
            raise ChannelUnavailableError(f"exec channel {self.info.path}: unexpected greeting")

    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:
        """Run one command through the proxy.

        Raises:
            ChannelUnavailableError: The request could not be sent (nothing ran): use Ray.
            SandboxError: The connection broke after the request was sent (the proxy died
                mid-command: it may or may not have run), or whatever the proxy's exec raised.
        """
        if self._closed:
            raise ChannelUnavailableError("exec channel closed")
        try:
            request = ExecArgs(command=command, cwd=cwd, env=env, timeout=timeout, stdin=stdin).model_dump()
        except ValidationError as exc:
            raise InvalidInputError(f"bad exec arguments: {exc}", field="command") from exc
        reader, writer, new = await self._connection()
        try:
            writer.write(_frame(request))
            await writer.drain()
        except OSError as exc:  # the proxy closed the connection: it cannot have read the request
            writer.close()
            raise ChannelUnavailableError(f"exec channel {self.info.path}: {exc!r}") from exc
        if new:
            await self._greeted(reader, writer)
        try:
            answer = await _read_frame(reader)
        except (asyncio.IncompleteReadError, OSError) as exc:
            writer.close()
            raise SandboxError(
                f"the sandbox proxy's exec channel broke during {command!r}; the command may or may not have run"
            ) from exc
        except BaseException:
            writer.close()  # cancelled mid-answer: this connection is out of step
            raise
        if len(self._idle) < self._max_idle and not self._closed:
            self._idle.append((reader, writer))
        else:
            writer.close()
        if "ok" in answer:
            return ExecResult.model_validate(answer["ok"])
        raise pickle.loads(answer["error"])  # noqa: S301 - from our own proxy, authenticated by token

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
