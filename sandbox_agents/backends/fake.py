"""The fake backend: in-memory files and scripted commands, for unit tests of upper floors.

Nothing here touches the host. Commands are answered by handlers registered per program
name (``backend.script("npm", handler)``); a few programs (``true``, ``false``, ``echo``,
``cat``, ``ls``) are built in. It does not isolate or run real processes, so the contract
suite skips what needs the ``exec``/``isolation``/``expose`` capabilities on it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from sandbox_agents.backends.base import (
    ExecChunk,
    ExecRequest,
    ExecResult,
    FileInfo,
    InstallRequest,
    InstallResult,
    SandboxSpec,
    SandboxStatus,
    SnapshotRef,
    exec_request,
)
from sandbox_agents.backends.config import FakeBackendConfig
from sandbox_agents.backends.paths import workspace_relative
from sandbox_agents.errors import SandboxDeadError, SandboxNotFoundError, SandboxPathError, SandboxTimeoutError

#: A scripted command: gets the sandbox and the request, returns the result (sync or async).
Handler = Callable[["FakeSandbox", ExecRequest], ExecResult | Awaitable[ExecResult]]


@dataclass
class _State:
    spec: SandboxSpec
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    status: SandboxStatus = SandboxStatus.RUNNING
    created_at: float = field(default_factory=time.monotonic)
    exposed: dict[int, str] = field(default_factory=dict)
    exec_log: list[list[str]] = field(default_factory=list)


class FakeSandbox:
    """A sandbox whose files live in a dict and whose commands are scripted."""

    def __init__(self, backend: FakeBackend, sandbox_id: str) -> None:
        self._backend = backend
        self._id = sandbox_id

    @property
    def id(self) -> str:
        return self._id

    @property
    def _state(self) -> _State:
        try:
            return self._backend._sandboxes[self._id]
        except KeyError:
            raise SandboxNotFoundError(f"no fake sandbox {self._id}", sandbox_id=self._id) from None

    @property
    def spec(self) -> SandboxSpec:
        return self._state.spec

    @property
    def exec_log(self) -> list[list[str]]:
        """Every argv run in this sandbox, in order (for assertions in tests)."""
        return self._state.exec_log

    def _alive(self) -> _State:
        state = self._state
        if state.status is not SandboxStatus.RUNNING:
            raise SandboxDeadError(f"sandbox {self._id} is {state.status}", sandbox_id=self._id)
        return state

    def _rel(self, path: str) -> str:
        rel = workspace_relative(path, workdir=self.spec.workdir, sandbox_id=self._id)
        if rel == ".":
            raise SandboxPathError("the workspace root is not a file", path=path, sandbox_id=self._id)
        return rel

    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:
        request = exec_request(command, cwd, env, timeout, stdin)
        state = self._alive()
        argv = request.argv()
        state.exec_log.append(argv)
        handler = self._backend._handlers.get(argv[0]) or self._backend._handlers.get("*")
        if handler is None:
            return ExecResult(exit_code=127, stderr=f"fake: {argv[0]}: command not found\n")
        started = time.monotonic()
        try:
            outcome = handler(self, request)
            if asyncio.iscoroutine(outcome) or isinstance(outcome, Awaitable):
                outcome = await asyncio.wait_for(outcome, request.timeout_s)  # type: ignore[arg-type]
        except TimeoutError:
            raise SandboxTimeoutError(
                f"command {argv!r} timed out after {request.timeout_s}s",
                timeout_s=request.timeout_s or 0.0,
                sandbox_id=self._id,
            ) from None
        assert isinstance(outcome, ExecResult)
        cap = request.output_cap
        truncated = outcome.truncated or len(outcome.stdout) > cap or len(outcome.stderr) > cap
        return outcome.model_copy(
            update={
                "stdout": outcome.stdout[:cap],
                "stderr": outcome.stderr[:cap],
                "truncated": truncated,
                "duration_s": outcome.duration_s or time.monotonic() - started,
            }
        )

    async def exec_stream(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ExecChunk]:
        result = await self.exec(command, cwd=cwd, env=env, timeout=timeout)
        for line in result.stdout.splitlines(keepends=True):
            yield ExecChunk(stream="stdout", data=line)
        if result.stderr:
            yield ExecChunk(stream="stderr", data=result.stderr)
        yield ExecChunk(stream="exit", exit_code=result.exit_code)

    async def write_file(self, path: str, data: bytes | str, *, mode: int | None = None) -> None:
        state = self._alive()
        rel = self._rel(path)
        payload = data.encode() if isinstance(data, str) else bytes(data)
        if len(payload) > state.spec.disk_mb * 1024 * 1024:
            raise SandboxPathError(f"{path}: over the disk quota", path=path, sandbox_id=self._id)
        state.files[rel] = (payload, mode if mode is not None else 0o644)

    async def read_file(self, path: str) -> bytes:
        state = self._alive()
        rel = self._rel(path)
        if rel not in state.files:
            raise FileNotFoundError(f"{path}: no such file in sandbox {self._id}")
        return state.files[rel][0]

    async def list_files(self, pattern: str = "**/*") -> list[FileInfo]:
        state = self._alive()
        dirs = {str(p) for rel in state.files for p in _parents(rel)}
        out = [FileInfo(path=d, size=0, is_dir=True, mode=0o755) for d in dirs]
        out += [FileInfo(path=rel, size=len(data), mode=mode) for rel, (data, mode) in state.files.items()]
        return sorted((f for f in out if _glob_match(f.path, pattern)), key=lambda f: f.path)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        state = self._alive()
        rel = self._rel(path)
        if rel in state.files:
            del state.files[rel]
            return
        inside = [k for k in state.files if k.startswith(rel + "/")]
        if not inside:
            raise FileNotFoundError(f"{path}: no such file in sandbox {self._id}")
        if not recursive:
            raise IsADirectoryError(f"{path} is a directory; pass recursive=True")
        for key in inside:
            del state.files[key]

    async def snapshot(self) -> SnapshotRef:
        state = self._alive()
        snap_id = f"fsnap-{uuid.uuid4().hex[:12]}"
        self._backend._snapshots[snap_id] = (state.spec, dict(state.files))
        size = sum(len(d) for d, _ in state.files.values())
        return SnapshotRef(backend="fake", id=snap_id, sandbox_id=self._id, spec=state.spec, size_bytes=size)

    async def expose(self, port: int) -> str:
        state = self._alive()
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        return state.exposed.setdefault(port, f"fake://{self._id}:{port}")

    async def install(self, request: InstallRequest) -> InstallResult:
        """The fake installs nothing: it checks the manifest is there and says so."""
        state = self._alive()
        name = "package.json" if request.manager == "npm" else "requirements.txt"
        path = name if request.dir in ("", ".") else f"{request.dir.rstrip('/')}/{name}"
        if path not in state.files:
            raise SandboxPathError(f"{path}: no such file; the install needs the manifest", path=path)
        return InstallResult(ok=True, cached=False, seconds=0.0, output="fake backend: nothing installed")

    async def keepalive(self) -> None:
        self._alive()

    async def status(self) -> SandboxStatus:
        return self._state.status

    async def terminate(self) -> None:
        state = self._state
        if state.status is SandboxStatus.RUNNING:
            state.status = SandboxStatus.TERMINATED

    def kill(self) -> None:
        """Make the sandbox dead as if its processes were killed (fault tests)."""
        self._state.status = SandboxStatus.DEAD


class FakeBackend:
    """In-memory backend. One instance is one "host": sandboxes live as long as it does."""

    name = "fake"
    capabilities: frozenset[str] = frozenset()

    def __init__(self, config: FakeBackendConfig | None = None) -> None:
        self.config = config or FakeBackendConfig()
        self._sandboxes: dict[str, _State] = {}
        self._snapshots: dict[str, tuple[SandboxSpec, dict[str, tuple[bytes, int]]]] = {}
        self._handlers: dict[str, Handler] = {
            "true": lambda sb, req: ExecResult(exit_code=0),
            "false": lambda sb, req: ExecResult(exit_code=1),
            "echo": lambda sb, req: ExecResult(exit_code=0, stdout=" ".join(req.argv()[1:]) + "\n"),
            "cat": _cat,
            "ls": _ls,
        }
        self._ids = itertools.count(1)

    def script(self, program: str, handler: Handler) -> None:
        """Answer every command whose argv[0] is ``program`` (``"*"``: any unknown one) with ``handler``."""
        self._handlers[program] = handler

    async def create(self, spec: SandboxSpec) -> FakeSandbox:
        sandbox_id = f"fake-{next(self._ids)}-{uuid.uuid4().hex[:6]}"
        self._sandboxes[sandbox_id] = _State(spec=spec)
        return FakeSandbox(self, sandbox_id)

    async def from_id(self, sandbox_id: str) -> FakeSandbox:
        if sandbox_id not in self._sandboxes:
            raise SandboxNotFoundError(f"no fake sandbox {sandbox_id}", sandbox_id=sandbox_id)
        return FakeSandbox(self, sandbox_id)

    async def list(self, tags: dict[str, str] | None = None) -> list[FakeSandbox]:
        wanted = tags or {}
        return [
            FakeSandbox(self, sid)
            for sid, st in self._sandboxes.items()
            if st.status is SandboxStatus.RUNNING and all(st.spec.tags.get(k) == v for k, v in wanted.items())
        ]

    async def restore(self, ref: SnapshotRef) -> FakeSandbox:
        if ref.id not in self._snapshots:
            raise SandboxNotFoundError(f"no fake snapshot {ref.id}")
        spec, files = self._snapshots[ref.id]
        sandbox = await self.create(spec)
        self._sandboxes[sandbox.id].files = dict(files)
        return sandbox

    async def close(self) -> None:
        return None


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _glob_match(path: str, pattern: str) -> bool:
    if pattern in ("**/*", "**", "*"):
        return pattern != "*" or "/" not in path
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern.replace("**/", ""))


def _cat(sandbox: FakeSandbox, request: ExecRequest) -> ExecResult:
    argv = request.argv()
    if len(argv) == 1:
        stdin = request.stdin or ""
        return ExecResult(exit_code=0, stdout=stdin.decode() if isinstance(stdin, bytes) else stdin)
    out = []
    for path in argv[1:]:
        rel = workspace_relative(path, sandbox_id=sandbox.id)
        entry = sandbox._state.files.get(rel)
        if entry is None:
            return ExecResult(exit_code=1, stderr=f"cat: {path}: No such file or directory\n")
        out.append(entry[0].decode(errors="replace"))
    return ExecResult(exit_code=0, stdout="".join(out))


def _ls(sandbox: FakeSandbox, request: ExecRequest) -> ExecResult:
    names = sorted({rel.split("/")[0] for rel in sandbox._state.files})
    return ExecResult(exit_code=0, stdout="".join(n + "\n" for n in names))
