"""The sandbox contract: one async protocol every backend implements.

A *backend* creates, finds, lists and restores sandboxes; a *Sandbox* runs commands,
moves files, snapshots itself, exposes ports and ends. The same contract suite
(``tests/integration/test_sandbox_contract.py``) runs against every backend.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator, Sequence
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbox_agents.errors import InvalidInputError

#: Output kept per stream of one command; past it the output is cut and marked.
DEFAULT_OUTPUT_CAP = 8 * 1024 * 1024

#: The largest file ``read_file`` returns (a merge's tree archive fits); past it, and for
#: anything but a regular file, the backend answers SandboxPathError naming path and cap.
MAX_READ_BYTES = 128 * 1024 * 1024


class NetworkPolicy(enum.StrEnum):
    """What a sandbox may reach on the network."""

    NONE = "none"
    """No network at all (loopback inside the sandbox only)."""
    INSTALL = "install"
    """Only the package registries named in ``allowed_hosts`` (HTTPS), and DNS."""
    FULL = "full"
    """Outbound network to public addresses; the host, private and link-local ranges stay unreachable."""


class InstallRequest(BaseModel):
    """Install a component's dependency manifest into the sandbox's workspace (the install phase)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manager: Literal["npm", "pip"]
    dir: str = Field(default=".", pattern=r"^(\.|[A-Za-z0-9_.-][A-Za-z0-9_./-]{0,199})$")
    """The manifest's directory, relative to the workspace."""
    timeout_s: float = Field(default=600.0, gt=0, le=3600)

    @field_validator("dir")
    @classmethod
    def _inside(cls, value: str) -> str:
        parts = value.split("/")
        if ".." in parts or "" in parts[:-1]:
            raise ValueError(f"dir {value!r} must be a relative path inside the workspace")
        return value


class InstallResult(BaseModel):
    """What an install did; ``ok`` False carries the installer's output (an error the team can fix)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool
    cached: bool
    """True when the tree came from the host's store without a registry request."""
    seconds: float
    output: str = ""
    key: str = ""
    """The manifest's key in the store (sha256 of manager, toolchain, manifest, lockfile)."""
    changed: bool = True
    """False when the workspace held this very tree already (nothing was touched)."""


class SandboxStatus(enum.StrEnum):
    """Life of a sandbox."""

    RUNNING = "running"
    DEAD = "dead"
    """Its processes are gone without a terminate (killed, expired, host lost)."""
    TERMINATED = "terminated"


class SandboxSpec(BaseModel):
    """What a sandbox should be: its image, limits, lifetime, network, env and tags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str = "default"
    """Base image/profile name (local: a base directory; Modal: an image definition)."""
    cpu: float = Field(default=1.0, gt=0, le=64)
    """CPU cores the sandbox may use."""
    memory_mb: int = Field(default=1024, ge=16, le=262144)
    """Memory limit; past it the sandbox's processes are OOM-killed."""
    max_pids: int = Field(default=256, ge=8, le=65536)
    """Most processes alive at once (fork bombs stop here)."""
    disk_mb: int = Field(default=1024, ge=1, le=1048576)
    """Workspace quota where the backend can enforce one."""
    timeout_s: float = Field(default=3600.0, gt=0, le=86400)
    """TTL: the sandbox ends this long after creation unless kept alive."""
    idle_timeout_s: float | None = Field(default=None, gt=0, le=86400)
    """End the sandbox after this long without an exec, file operation or keepalive."""
    network: NetworkPolicy = NetworkPolicy.NONE
    """Network policy."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names reachable (port 443) under ``install``: the package registries of the install."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment given to every command."""
    secrets: dict[str, str] = Field(default_factory=dict)
    """Declared secrets (name → value); only these ever enter the sandbox, as env vars."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Labels for ``list(tags)``: build id, component, role…"""
    ports: tuple[int, ...] = ()
    """Ports that may be exposed."""
    workdir: str = "/workspace"
    """Where commands run and relative paths resolve, inside the sandbox."""

    @field_validator("env", "secrets")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or not (name[0].isalpha() or name[0] == "_") or not all(c.isalnum() or c == "_" for c in name):
                raise ValueError(f"invalid environment variable name {name!r}")
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} out of range 1..65535")
        return value


class ExecResult(BaseModel):
    """What a finished command gave."""

    model_config = ConfigDict(extra="forbid")

    exit_code: int
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    truncated: bool = False
    """True when stdout or stderr went past the output cap and was cut."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class ExecChunk(BaseModel):
    """One piece of a streaming command's output; the last chunk has ``exit_code`` set."""

    model_config = ConfigDict(extra="forbid")

    stream: Literal["stdout", "stderr", "exit"]
    data: str = ""
    exit_code: int | None = None


class FileInfo(BaseModel):
    """One entry of ``list_files``: a path relative to the workspace."""

    model_config = ConfigDict(extra="forbid")

    path: str
    size: int
    is_dir: bool = False
    mode: int = 0o644


class SnapshotRef(BaseModel):
    """A saved copy of a sandbox's workspace, restorable into a new sandbox."""

    model_config = ConfigDict(extra="forbid")

    backend: str
    id: str
    sandbox_id: str
    spec: SandboxSpec
    created_at: float = Field(default_factory=time.time)
    size_bytes: int = 0


class ExecRequest(BaseModel):
    """A validated command: argv (list) or a shell string, with its options."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] | str
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0, le=86400)
    stdin: str | bytes | None = None
    output_cap: int = Field(default=DEFAULT_OUTPUT_CAP, ge=1024)

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and (not value or not all(isinstance(a, str) and "\0" not in a for a in value)):
            raise ValueError("command must be a non-empty list of strings without NUL bytes")
        if isinstance(value, str) and (not value.strip() or "\0" in value):
            raise ValueError("command must be a non-empty shell string without NUL bytes")
        return value

    def argv(self) -> list[str]:
        """The argv to run: a shell string runs through ``/bin/sh -c``."""
        return ["/bin/sh", "-c", self.command] if isinstance(self.command, str) else list(self.command)


def exec_request(
    command: list[str] | str,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    stdin: str | bytes | None = None,
) -> ExecRequest:
    """Validate exec arguments into an :class:`ExecRequest`, refusing bad ones with our error."""
    if cwd is not None:
        from sandbox_agents.backends.paths import workspace_relative

        workspace_relative(cwd)  # refuses a working directory outside the workspace
    try:
        return ExecRequest(command=command, cwd=cwd, env=env or {}, timeout_s=timeout, stdin=stdin)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise InvalidInputError(f"invalid exec request: {exc}", field="command") from exc


@runtime_checkable
class Sandbox(Protocol):
    """One isolated execution target."""

    @property
    def id(self) -> str: ...

    @property
    def spec(self) -> SandboxSpec: ...

    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:
        """Run a command to its end. Raises SandboxTimeoutError past ``timeout``."""
        ...

    def exec_stream(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ExecChunk]:
        """Run a command, yielding output as it comes; the last chunk carries the exit code."""
        ...

    async def write_file(self, path: str, data: bytes | str, *, mode: int | None = None) -> None: ...

    async def read_file(self, path: str) -> bytes: ...

    async def list_files(self, pattern: str = "**/*") -> list[FileInfo]: ...

    async def remove(self, path: str, *, recursive: bool = False) -> None: ...

    async def snapshot(self) -> SnapshotRef: ...

    async def expose(self, port: int) -> str:
        """A URL on which the host reaches ``port`` inside the sandbox."""
        ...

    async def install(self, request: InstallRequest) -> InstallResult:
        """Run the install phase for one manifest: its dependencies appear in the workspace.

        The network it needs is never the sandbox's own (see the backend). A failed install
        is an ``InstallResult`` with ``ok`` False, not an exception.
        """
        ...

    async def keepalive(self) -> None:
        """Push the idle deadline back (and the TTL, up to the backend's maximum)."""
        ...

    async def status(self) -> SandboxStatus: ...

    async def terminate(self) -> None: ...


@runtime_checkable
class SandboxBackend(Protocol):
    """Creates and finds sandboxes of one kind."""

    name: str
    #: What this backend really does, for the contract suite: "exec" (real processes),
    #: "isolation" (namespaces, limits), "expose" (real HTTP forwarding).
    capabilities: frozenset[str]

    async def create(self, spec: SandboxSpec) -> Sandbox: ...

    async def from_id(self, sandbox_id: str) -> Sandbox:
        """Reconnect to an existing sandbox, from any process. Raises SandboxNotFoundError."""
        ...

    async def list(self, tags: dict[str, str] | None = None) -> Sequence[Sandbox]: ...

    async def restore(self, ref: SnapshotRef) -> Sandbox:
        """A new sandbox whose workspace is the snapshot's, byte for byte."""
        ...

    async def close(self) -> None:
        """Release what the backend object holds (not the sandboxes)."""
        ...
