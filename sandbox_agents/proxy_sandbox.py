"""A :class:`~sandbox_agents.backends.base.Sandbox` over a SandboxProxy actor handle.

The agent's tools speak the Sandbox protocol; an Agent actor reaches its sandbox only
through the sandbox's proxy actor. This adapter turns each protocol method into one call
on the handle (``await handle.method.remote(...)``), so :class:`~sandbox_agents.tools.AgentTools`
work unchanged on a proxy. It never imports Ray: it only calls methods of the handle it
is given (any object with the same shape works, which is how it is unit-tested).

Errors raised inside the proxy reach the caller as Ray's task errors, which are also
instances of the original class (a ``SandboxPathError`` stays catchable as one), so the
tools' error handling applies as it does on a local sandbox.

``exec``, the hot path, goes over the proxy's same-host channel when there is one
(:mod:`sandbox_agents.exec_channel`: a unix socket the proxy process serves, ~0.3 ms instead of
a 2–3 ms Ray round trip); when the channel is gone (the proxy restarted) the call goes through
Ray and the next one asks the proxy for its new channel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from sandbox_agents.backends.base import (
    ExecChunk,
    ExecResult,
    FileInfo,
    InstallRequest,
    InstallResult,
    SandboxSpec,
    SandboxStatus,
    SnapshotRef,
)
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.exec_channel import ChannelInfo, ChannelUnavailableError, ExecChannelClient

logger = logging.getLogger(__name__)

CHANNEL_RETRY_S = 30.0
"""How long a ProxySandbox with no channel (another host, channels off) waits before asking again."""


class ProxySandbox:
    """The sandbox a SandboxProxy actor owns, seen through its handle.

    Args:
        handle: The proxy actor's handle.
        sandbox_id: The id of the sandbox the proxy owns (``await handle.sandbox_id.remote()``).
        spec: The sandbox's spec; the tools read ``spec.workdir`` from it. The proxy does not
            serve its spec, so the owner passes the one it created the sandbox with.
    """

    def __init__(self, handle: Any, sandbox_id: str, spec: SandboxSpec | None = None) -> None:
        if not sandbox_id:
            raise InvalidInputError("sandbox_id must be a non-empty string", field="sandbox_id")
        self._handle = handle
        self._id = sandbox_id
        self._spec = spec or SandboxSpec()
        self._channel: ExecChannelClient | None = None
        self._channel_asked_at: float | None = None

    @classmethod
    async def connect(cls, handle: Any, spec: SandboxSpec | None = None) -> ProxySandbox:
        """An adapter for the sandbox the proxy owns now.

        Raises:
            InvalidInputError: The proxy owns no sandbox (create or attach one first).
        """
        sandbox_id = await handle.sandbox_id.remote()
        if not sandbox_id:
            raise InvalidInputError("the proxy owns no sandbox: create or attach one first", field="handle")
        return cls(handle, sandbox_id, spec)

    @classmethod
    async def create(
        cls, handle: Any, spec: SandboxSpec, *, build_id: str | None = None, component: str | None = None
    ) -> ProxySandbox:
        """Have the proxy create (or adopt) a sandbox for ``spec``; an adapter for it.

        One round trip (``SandboxProxy.open``) also brings the proxy's exec channel, so the
        first command already skips Ray.
        """
        opened = await handle.open.remote(spec, build_id, component)
        sandbox = cls(handle, opened["sandbox_id"], spec)
        sandbox._channel_asked_at = time.monotonic()
        sandbox._channel = _client(opened["channel"])
        return sandbox

    @staticmethod
    async def _ask_channel(handle: Any) -> ExecChannelClient | None:
        try:
            answer = await handle.exec_channel.remote()
        except Exception as exc:  # noqa: BLE001 - an older proxy, or a handle without one: Ray calls do the job
            logger.info("proxy %s offers no exec channel (%r): commands go through Ray", handle, exc)
            return None
        return _client(answer)

    @property
    def id(self) -> str:
        return self._id

    @property
    def spec(self) -> SandboxSpec:
        return self._spec

    @property
    def handle(self) -> Any:
        return self._handle

    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:
        channel = await self._exec_channel()
        if channel is not None:
            try:
                return await channel.exec(command, cwd=cwd, env=env, timeout=timeout, stdin=stdin)
            except ChannelUnavailableError:  # nothing was sent: Ray's path now, a new channel next time
                await self._drop_channel()
        result: ExecResult = await self._handle.exec.remote(command, cwd, env, timeout, stdin)
        return result

    async def _exec_channel(self) -> ExecChannelClient | None:
        """The proxy's same-host channel (asked at most once per ``CHANNEL_RETRY_S`` while there is none)."""
        if self._channel is not None:
            return self._channel
        now = time.monotonic()
        if self._channel_asked_at is not None and now - self._channel_asked_at < CHANNEL_RETRY_S:
            return None
        self._channel_asked_at = now
        self._channel = await self._ask_channel(self._handle)
        return self._channel

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        self._channel_asked_at = None  # the proxy restarted: ask for its new channel on the next call
        if channel is not None:
            await channel.aclose()  # shared: the other users of this dead channel ask again too

    async def aclose(self) -> None:
        """Stop using the exec channel (its connections are shared per proxy and process: they stay)."""
        self._channel = None

    async def exec_stream(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ExecChunk]:
        refs = self._handle.exec_stream.options(num_returns="streaming").remote(command, cwd, env, timeout)
        async for ref in refs:
            yield await ref

    async def write_file(self, path: str, data: bytes | str, *, mode: int | None = None) -> None:
        await self._handle.write_file.remote(path, data, mode)

    async def read_file(self, path: str) -> bytes:
        data: bytes = await self._handle.read_file.remote(path)
        return data

    async def list_files(self, pattern: str = "**/*") -> list[FileInfo]:
        files: list[FileInfo] = await self._handle.list_files.remote(pattern)
        return files

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self._handle.remove.remote(path, recursive)

    async def snapshot(self) -> SnapshotRef:
        ref: SnapshotRef = await self._handle.snapshot.remote()
        return ref

    async def expose(self, port: int) -> str:
        url: str = await self._handle.expose.remote(port)
        return url

    async def install(self, request: InstallRequest) -> InstallResult:
        result: InstallResult = await self._handle.install.remote(request.model_dump())
        return result

    async def keepalive(self) -> None:
        await self._handle.keepalive.remote()

    async def status(self) -> SandboxStatus:
        status: SandboxStatus = await self._handle.status.remote()
        return status

    async def terminate(self) -> None:
        await self._handle.terminate.remote()


def _client(answer: dict[str, Any] | None) -> ExecChannelClient | None:
    """A client for a proxy's channel answer, when it is usable from here."""
    if not answer:
        return None
    info = ChannelInfo.model_validate(answer)
    return ExecChannelClient.shared(info) if ExecChannelClient.usable(info) else None
