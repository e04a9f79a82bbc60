"""Running commands in a Modal sandbox: ``sb.exec`` to its end or streamed, bounded and capped.

A mixin of :class:`~sandbox_agents.backends.modal.backend.ModalSandbox`, on top of the file mixin
(whose path checks give the command's working directory). Every SDK call goes through
:func:`modal_errors`; a command never waits much past its own deadline (Modal kills it there
and reports ``-1``, which becomes :class:`SandboxTimeoutError` with the output so far), and
:meth:`ModalExec.exec` keeps at most ``output_cap`` characters per stream.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from sandbox_agents.backends.base import ExecChunk, ExecRequest, ExecResult, exec_request
from sandbox_agents.backends.modal.files import ModalFiles
from sandbox_agents.backends.modal.support import modal_errors
from sandbox_agents.errors import SandboxTimeoutError

#: Extra time we give Modal past a command's own deadline before we stop waiting ourselves.
_EXEC_GRACE_S = 10.0


class ModalExec(ModalFiles):
    """Exec methods of :class:`~sandbox_agents.backends.modal.backend.ModalSandbox` (a mixin)."""

    def _workdir_for(self, cwd: str | None) -> str:
        return self._abs(cwd) if cwd is not None else self._spec.workdir

    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:
        """Run a command to its end (``sb.exec`` + ``wait``), keeping at most ``output_cap`` per stream.

        Raises:
            SandboxTimeoutError: past ``timeout`` (Modal kills the command at its deadline).
            SandboxDeadError: the sandbox is gone.
        """
        request = exec_request(command, cwd, env, timeout, stdin)
        started = time.monotonic()
        out: dict[str, list[str]] = {"stdout": [], "stderr": []}
        sizes = {"stdout": 0, "stderr": 0}
        truncated = False

        def keep(stream: str, data: str) -> None:
            nonlocal truncated
            room = request.output_cap - sizes[stream]
            if len(data) > room:
                truncated = True
                data = data[: max(room, 0)]
            if data:
                out[stream].append(data)
                sizes[stream] += len(data)

        async def run() -> int:
            proc = await self._start(request)
            await asyncio.gather(
                self._feed_stdin(proc, request.stdin),
                self._drain(proc.stdout, lambda d: keep("stdout", d)),
                self._drain(proc.stderr, lambda d: keep("stderr", d)),
            )
            return int(await proc.wait.aio())

        try:
            exit_code = await self._bounded(run(), request)
        except SandboxTimeoutError as exc:
            exc.stdout, exc.stderr = "".join(out["stdout"]), "".join(out["stderr"])
            raise
        duration = time.monotonic() - started
        if exit_code == -1 and request.timeout_s is not None and duration >= request.timeout_s * 0.95:
            # Modal reports an exec that hit its deadline as return code -1.
            raise SandboxTimeoutError(
                f"command timed out after {request.timeout_s}s",
                timeout_s=request.timeout_s,
                stdout="".join(out["stdout"]),
                stderr="".join(out["stderr"]),
                sandbox_id=self.id,
            )
        return ExecResult(
            exit_code=exit_code,
            stdout="".join(out["stdout"]),
            stderr="".join(out["stderr"]),
            duration_s=duration,
            truncated=truncated,
        )

    async def exec_stream(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ExecChunk]:
        """Run a command, yielding stdout/stderr chunks as Modal delivers them, then the exit chunk."""
        request = exec_request(command, cwd, env, timeout)
        queue: asyncio.Queue[ExecChunk | BaseException] = asyncio.Queue()
        started = time.monotonic()

        async def run() -> None:
            try:
                proc = await self._start(request)
                await asyncio.gather(
                    self._feed_stdin(proc, None),
                    self._drain(proc.stdout, lambda d: queue.put_nowait(ExecChunk(stream="stdout", data=d))),
                    self._drain(proc.stderr, lambda d: queue.put_nowait(ExecChunk(stream="stderr", data=d))),
                )
                code = int(await proc.wait.aio())
                if code == -1 and request.timeout_s and time.monotonic() - started >= request.timeout_s * 0.95:
                    raise SandboxTimeoutError(
                        f"command timed out after {request.timeout_s}s",
                        timeout_s=request.timeout_s,
                        sandbox_id=self.id,
                    )
                queue.put_nowait(ExecChunk(stream="exit", exit_code=code))
            except BaseException as exc:  # handed to the consumer, which re-raises it
                queue.put_nowait(exc)

        task = asyncio.ensure_future(self._bounded(run(), request))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.stream == "exit":
                    return
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):  # its error, if any, was already delivered
                await task

    async def _start(self, request: ExecRequest) -> Any:
        kwargs: dict[str, Any] = {"workdir": self._workdir_for(request.cwd)}
        if request.timeout_s is not None:
            kwargs["timeout"] = max(1, math.ceil(request.timeout_s))
        if request.env:
            kwargs["env"] = dict(request.env)
        with modal_errors(self._sdk, sandbox_id=self.id):
            return await self._sb.exec.aio(*request.argv(), **kwargs)

    async def _bounded(self, work: Any, request: ExecRequest) -> Any:
        """Await ``work``, translating Modal errors; never wait much past the command's deadline."""
        limit = None if request.timeout_s is None else request.timeout_s + _EXEC_GRACE_S
        try:
            with modal_errors(self._sdk, sandbox_id=self.id, timeout_s=request.timeout_s):
                return await asyncio.wait_for(work, limit)
        except TimeoutError as exc:
            if isinstance(exc, SandboxTimeoutError):
                raise
            raise SandboxTimeoutError(
                f"command timed out after {request.timeout_s}s", timeout_s=request.timeout_s or 0.0, sandbox_id=self.id
            ) from None

    @staticmethod
    async def _feed_stdin(proc: Any, data: str | bytes | None) -> None:
        # Always send EOF: a command reading stdin would otherwise wait for the sandbox's end.
        if data:
            proc.stdin.write(data.encode() if isinstance(data, str) else data)
        proc.stdin.write_eof()
        await proc.stdin.drain.aio()

    @staticmethod
    async def _drain(stream: Any, sink: Any) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        async for chunk in stream:
            text = decoder.decode(chunk) if isinstance(chunk, bytes | bytearray) else chunk
            if text:
                sink(text)
        tail = decoder.decode(b"", final=True)
        if tail:
            sink(tail)
