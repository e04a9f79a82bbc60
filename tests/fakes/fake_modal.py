"""A faithful in-process fake of the ``modal`` SDK surface the Modal backend uses (SDK 1.6.4).

Modelled on the real signatures (same parameter names; an unknown keyword raises TypeError
as the real function would) and on the real calling convention (``obj.method.aio(...)`` in
async code). Behind it is real work: each exec is a real local subprocess (its own process
group), each sandbox a real temp directory onto which the sandbox ``workdir`` maps (the exec
``cwd`` is set accordingly; nothing else is rewritten, so a command naming ``/workspace/…``
literally sees the host path). ``snapshot_filesystem`` copies the workspace into an Image;
``tunnels()`` returns URLs that really reach the port on the host loopback.

What it does not do: isolation and network policy (``block_network`` and allowlists are
recorded, not enforced), resource limits, GPUs, volumes, PTYs. Every call is recorded in
``FakeModal.calls`` as ``(name, kwargs)`` for translation tests; ``inject`` makes the next
call of a name raise, ``authenticated=False`` and ``unreachable=True`` mimic a missing token
(``AuthError: Token missing`` at once) and an unreachable server (the SDK retries ~60 s).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import functools
import os
import shutil
import signal
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class exception:  # noqa: N801 - mirrors the ``modal.exception`` module
    """Class names and hierarchy of ``modal.exception`` (the subset the SDK raises here)."""

    class Error(Exception):
        pass

    class AlreadyExistsError(Error):
        pass

    class AuthError(Error):
        pass

    class InternalError(Error):
        pass

    class InvalidError(Error):
        pass

    class ConflictError(InvalidError):
        pass

    class NotFoundError(Error):
        pass

    class PermissionDeniedError(Error):
        pass

    class ResourceExhaustedError(Error):
        pass

    class ServiceError(Error):
        pass

    class RemoteError(Error):
        pass

    class TimeoutError(Error):  # noqa: A001 - the SDK shadows the builtin name too
        pass

    class SandboxTimeoutError(TimeoutError):
        pass

    class ExecTimeoutError(TimeoutError):
        pass

    class SnapshotCreationError(Error):
        pass

    class SandboxTerminatedError(Error):
        pass

    class ConnectionError(Error):  # noqa: A001
        pass

    class ExecutionError(Error):
        pass

    class SandboxFilesystemError(Error):
        pass

    class SandboxFilesystemNotFoundError(SandboxFilesystemError):
        pass

    class SandboxFilesystemDirectoryNotEmptyError(SandboxFilesystemError):
        pass

    class SandboxFilesystemIsADirectoryError(SandboxFilesystemError):
        pass

    class SandboxFilesystemNotADirectoryError(SandboxFilesystemError):
        pass

    class SandboxFilesystemPermissionError(SandboxFilesystemError):
        pass

    class SandboxFilesystemPathAlreadyExistsError(SandboxFilesystemError):
        pass


# --- the SDK's calling convention ------------------------------------------------------


class _Bound:
    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.aio = fn
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"fake modal: use `{self._name}.aio(...)` from async code")


class _synced:  # noqa: N801
    """A method called as ``x.method.aio(...)``; on a class it binds the class (classmethod-like)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def __get__(self, obj: Any, owner: type) -> _Bound:
        return _Bound(functools.partial(self._fn, obj if obj is not None else owner), self._fn.__name__)


# --- small value types -----------------------------------------------------------------


@dataclass(frozen=True)
class Tunnel:
    """Like ``modal._tunnel.Tunnel``; ``url`` is plain HTTP on the host loopback in the fake."""

    host: str
    port: int
    unencrypted_host: str = ""
    unencrypted_port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class Secret:
    env_dict: dict[str, str | None]

    @classmethod
    def from_dict(cls, env_dict: dict[str, str | None] = {}) -> Secret:  # noqa: B006 - the SDK's default
        return cls(dict(env_dict))


@dataclass
class App:
    name: str
    app_id: str


@dataclass
class Client:
    token_id: str


# --- images ----------------------------------------------------------------------------


class Image:
    """Builder steps are recorded; a snapshot Image carries a copy of the files (``files_dir``)."""

    _modal: FakeModal

    def __init__(self, steps: tuple[tuple[str, Any], ...] = (), files_dir: Path | None = None) -> None:
        self.steps = steps
        self.files_dir = files_dir
        self.object_id: str | None = None

    def _then(self, step: str, value: Any) -> Image:
        return type(self)(self.steps + ((step, value),))

    @classmethod
    def debian_slim(cls, python_version: str | None = None, force_build: bool = False) -> Image:
        return cls((("debian_slim", python_version),))

    def apt_install(self, *packages: str | list[str], force_build: bool = False, env: Any = None, secrets: Any = None,
                    gpu: str | None = None) -> Image:  # fmt: skip
        return self._then("apt_install", packages)

    def run_commands(self, *commands: str | list[str], env: Any = None, secrets: Any = None, volumes: Any = None,
                     gpu: str | None = None, force_build: bool = False) -> Image:  # fmt: skip
        return self._then("run_commands", commands)

    def pip_install(self, *packages: str | list[str], find_links: str | None = None, index_url: str | None = None,
                    extra_index_url: str | None = None, pre: bool = False, extra_options: str = "",
                    force_build: bool = False, env: Any = None, secrets: Any = None,
                    gpu: str | None = None) -> Image:  # fmt: skip
        return self._then("pip_install", packages)

    def env(self, vars: dict[str, str]) -> Image:  # noqa: A002 - the SDK's name
        return self._then("env", dict(vars))

    def workdir(self, path: str) -> Image:
        return self._then("workdir", str(path))

    @_synced
    async def build(self, app: App | None = None) -> Image:
        self._modal._record("Image.build", {"app": app})
        await self._modal._gate("Image.build")
        self.object_id = self.object_id or f"im-{uuid.uuid4().hex[:20]}"
        self._modal.images[self.object_id] = self
        return self

    @classmethod
    def from_id(cls, image_id: str, client: Client | None = None) -> Image:
        image = cls()
        image.object_id = image_id  # lazy, as in the SDK: an unknown id fails where it is used
        return image


# --- processes -------------------------------------------------------------------------


class StreamReader:
    def __init__(self, reader: asyncio.StreamReader, text: bool) -> None:
        self._reader = reader
        self._text = text

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Any]:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while chunk := await self._reader.read(65536):
            yield decoder.decode(chunk) if self._text else chunk
        if self._text and (tail := decoder.decode(b"", final=True)):
            yield tail

    @_synced
    async def read(self) -> Any:
        parts = [c async for c in self._chunks()]
        return ("" if self._text else b"").join(parts)


class StreamWriter:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._buffer = bytearray()
        self._eof = False

    def write(self, data: bytes | bytearray | memoryview | str) -> None:
        if self._eof:
            raise ValueError("Stdin is closed. Cannot write to it.")
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__}")
        self._buffer += data

    def write_eof(self) -> None:
        self._eof = True

    @_synced
    async def drain(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if self._buffer:
                stdin.write(bytes(self._buffer))
                self._buffer.clear()
                await stdin.drain()
            if self._eof:
                stdin.close()


class ContainerProcess:
    def __init__(self, proc: asyncio.subprocess.Process, timeout: int | None, text: bool) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self._proc = proc
        self.stdout = StreamReader(proc.stdout, text)
        self.stderr = StreamReader(proc.stderr, text)
        self.stdin = StreamWriter(proc)
        self._returncode: int | None = None
        self._waiter = asyncio.ensure_future(self._watch(timeout))

    async def _watch(self, timeout: int | None) -> int:
        try:
            code = await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            _kill_group(self._proc.pid)
            await self._proc.wait()
            return -1  # what the SDK's wait() reports for an exec past its deadline
        return 128 - code if code < 0 else code

    @_synced
    async def wait(self) -> int:
        self._returncode = await asyncio.shield(self._waiter)
        return self._returncode

    @_synced
    async def poll(self) -> int | None:
        return self._waiter.result() if self._waiter.done() else None

    @property
    def returncode(self) -> int:
        if self._returncode is None:
            raise exception.InvalidError("You must call wait() before accessing the returncode.")
        return self._returncode


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# --- sandboxes -------------------------------------------------------------------------


@dataclass
class _State:
    object_id: str
    name: str | None
    app: App
    root: Path
    workdir: str
    env: dict[str, str]
    tags: dict[str, str]
    timeout: int | None
    idle_timeout: int | None
    encrypted_ports: list[int]
    created: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    returncode: int | None = None
    pids: set[int] = field(default_factory=set)

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"


class Filesystem:
    """``sb.filesystem``: absolute in-sandbox paths under the workdir, mapped onto the temp dir."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def _host(self, remote_path: str, op: str) -> Path:
        if not remote_path.startswith("/"):
            raise exception.InvalidError(f"{op}: remote_path must be an absolute path, got {remote_path!r}")
        state = self._sb._live()
        rel = os.path.relpath(os.path.normpath(remote_path), state.workdir)
        if rel.startswith(".."):
            raise exception.SandboxFilesystemPermissionError(f"fake modal: {remote_path} is outside the workdir")
        host = state.workspace / rel
        # The fake's own guard: a symlink must not carry a real file operation onto the host.
        if not os.path.realpath(host).startswith(os.path.realpath(state.workspace)):
            raise exception.SandboxFilesystemPermissionError(f"fake modal: {remote_path} resolves outside the sandbox")
        return host

    @contextlib.contextmanager
    def _os_errors(self, remote_path: str) -> Any:
        try:
            yield
        except FileNotFoundError:
            raise exception.SandboxFilesystemNotFoundError(f"{remote_path}: not found") from None
        except IsADirectoryError:
            raise exception.SandboxFilesystemIsADirectoryError(f"{remote_path}: is a directory") from None
        except NotADirectoryError:
            raise exception.SandboxFilesystemNotADirectoryError(f"{remote_path}: not a directory") from None
        except FileExistsError:
            raise exception.SandboxFilesystemPathAlreadyExistsError(f"{remote_path}: exists") from None
        except PermissionError:
            raise exception.SandboxFilesystemPermissionError(f"{remote_path}: permission denied") from None
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                raise exception.SandboxFilesystemDirectoryNotEmptyError(f"{remote_path}: not empty") from None
            raise exception.SandboxFilesystemError(f"{remote_path}: {exc}") from None

    async def _op(self, name: str, kwargs: dict[str, Any]) -> None:
        self._sb._modal._record(f"filesystem.{name}", kwargs)
        await self._sb._modal._gate(f"filesystem.{name}")
        self._sb._live().last_active = time.monotonic()

    @_synced
    async def read_bytes(self, remote_path: str) -> bytes:
        await self._op("read_bytes", {"remote_path": remote_path})
        with self._os_errors(remote_path):
            return self._host(remote_path, "read_bytes").read_bytes()

    @_synced
    async def write_bytes(self, data: bytes | bytearray | memoryview, remote_path: str) -> None:
        await self._op("write_bytes", {"remote_path": remote_path, "size": len(data)})
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("data must be bytes-like")
        host = self._host(remote_path, "write_bytes")
        with self._os_errors(remote_path):
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_bytes(bytes(data))

    @_synced
    async def make_directory(self, remote_path: str, *, create_parents: bool = True) -> None:
        await self._op("make_directory", {"remote_path": remote_path, "create_parents": create_parents})
        with self._os_errors(remote_path):
            self._host(remote_path, "make_directory").mkdir(parents=create_parents, exist_ok=create_parents)

    @_synced
    async def list_files(self, remote_path: str) -> list[dict[str, Any]]:
        await self._op("list_files", {"remote_path": remote_path})
        with self._os_errors(remote_path):
            host = self._host(remote_path, "list_files")
            return [
                {
                    "name": p.name,
                    "path": f"{remote_path.rstrip('/')}/{p.name}",
                    "size": p.lstat().st_size,
                    "type": "directory" if p.is_dir() else "file",
                }  # fmt: skip
                for p in sorted(host.iterdir())
            ]

    @_synced
    async def remove(self, remote_path: str, *, recursive: bool = False) -> None:
        await self._op("remove", {"remote_path": remote_path, "recursive": recursive})
        host = self._host(remote_path, "remove")
        with self._os_errors(remote_path):
            if host.is_dir() and not host.is_symlink():
                shutil.rmtree(host) if recursive else host.rmdir()
            else:
                host.unlink()


class Sandbox:
    """A handle on a fake sandbox; several handles (``from_id``) share one state."""

    _modal: FakeModal

    def __init__(self, state: _State) -> None:
        self._state = state

    @property
    def object_id(self) -> str:
        return self._state.object_id

    @property
    def filesystem(self) -> Filesystem:
        return Filesystem(self)

    def _live(self) -> _State:
        state = self._state
        self._modal._expire(state)
        if state.returncode is not None:
            raise exception.SandboxTerminatedError(f"Sandbox {state.object_id} has already finished")
        return state

    @_synced
    async def create(
        cls,
        *args: str,
        app: App | None = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        image: Image | None = None,
        env: dict[str, str | None] | None = None,
        secrets: Collection[Secret] | None = None,
        network_file_systems: dict[Any, Any] = {},  # noqa: B006 - the SDK's defaults
        timeout: int | None = 300,
        idle_timeout: int | None = None,
        workdir: str | None = None,
        gpu: str | None = None,
        cloud: str | None = None,
        region: str | Sequence[str] | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        runtime: str | None = None,
        block_network: bool = False,
        outbound_cidr_allowlist: Sequence[str] | None = None,
        outbound_domain_allowlist: Sequence[str] | None = None,
        _experimental_outbound_policy: Any = None,
        inbound_cidr_allowlist: Sequence[str] | None = None,
        volumes: dict[Any, Any] = {},  # noqa: B006
        pty: bool = False,
        encrypted_ports: Sequence[int] = [],  # noqa: B006
        h2_ports: Sequence[int] = [],  # noqa: B006
        unencrypted_ports: Sequence[int] = [],  # noqa: B006
        custom_domain: str | None = None,
        proxy: Any = None,
        include_oidc_identity_token: bool = False,
        readiness_probe: Any = None,
        verbose: bool = False,
        experimental_options: dict[str, Any] | None = None,
        _experimental_enable_snapshot: bool = False,
        _experimental_persistent: bool = False,
        client: Client | None = None,
        environment_name: str | None = None,
        pty_info: Any = None,
        cidr_allowlist: Sequence[str] | None = None,
    ) -> Sandbox:
        modal = cls._modal
        recorded = {k: v for k, v in locals().items() if k not in {"cls", "modal", "args"}}
        modal._record("Sandbox.create", {"args": args, **recorded})
        await modal._gate("Sandbox.create")
        if app is None:
            raise exception.InvalidError("Sandboxes require an App when created outside of a Modal container.")
        if block_network and (outbound_cidr_allowlist or outbound_domain_allowlist):
            raise exception.InvalidError("`block_network` cannot be combined with an outbound allowlist.")
        if name is not None and any(s.name == name and s.returncode is None for s in modal.sandboxes.values()):
            raise exception.AlreadyExistsError(f"Sandbox with name {name!r} already exists")
        if image is not None and image.object_id is not None and image.files_dir is None:
            known = modal.images.get(image.object_id)
            if known is None:
                raise exception.NotFoundError(f"Image {image.object_id} not found")
            image = known
        object_id = f"sb-{uuid.uuid4().hex[:22]}"
        root = modal.root / object_id
        state = _State(
            object_id=object_id,
            name=name,
            app=app,
            root=root,
            workdir=os.path.normpath(workdir or "/"),
            env={k: v for k, v in (env or {}).items() if v is not None},
            tags=dict(tags or {}),
            timeout=timeout,
            idle_timeout=idle_timeout,
            encrypted_ports=list(encrypted_ports),
        )
        for secret in secrets or ():
            state.env.update({k: v for k, v in secret.env_dict.items() if v is not None})
        (root / "home").mkdir(parents=True)
        if image is not None and image.files_dir is not None:
            shutil.copytree(image.files_dir, state.workspace, symlinks=True)
        else:
            state.workspace.mkdir()
        modal.sandboxes[object_id] = state
        return cls(state)

    @_synced
    async def from_id(cls, sandbox_id: str, client: Client | None = None) -> Sandbox:
        cls._modal._record("Sandbox.from_id", {"sandbox_id": sandbox_id})
        await cls._modal._gate("Sandbox.from_id")
        state = cls._modal.sandboxes.get(sandbox_id)
        if state is None:
            raise exception.NotFoundError(f"Sandbox with id {sandbox_id} not found")
        return cls(state)

    @_synced
    async def list(
        cls, *, app_id: str | None = None, tags: dict[str, str] | None = None, client: Client | None = None
    ) -> AsyncIterator[Sandbox]:
        cls._modal._record("Sandbox.list", {"app_id": app_id, "tags": tags})
        await cls._modal._gate("Sandbox.list")
        for state in list(cls._modal.sandboxes.values()):
            cls._modal._expire(state)
            if state.returncode is not None or (app_id is not None and state.app.app_id != app_id):
                continue
            if all(state.tags.get(k) == v for k, v in (tags or {}).items()):
                yield cls(state)

    @_synced
    async def exec(
        self,
        *args: str,
        stdout: Any = None,
        stderr: Any = None,
        timeout: int | None = None,
        workdir: str | None = None,
        env: dict[str, str | None] | None = None,
        secrets: Collection[Secret] | None = None,
        text: bool = True,
        bufsize: int = -1,
        pty: bool = False,
        _pty_info: Any = None,
        pty_info: Any = None,
    ) -> ContainerProcess:
        self._modal._record("Sandbox.exec", {"args": args, "timeout": timeout, "workdir": workdir, "env": env})
        await self._modal._gate("Sandbox.exec")
        if not args or not all(isinstance(a, str) for a in args):
            raise exception.InvalidError("exec needs a command of strings")
        state = self._live()
        state.last_active = time.monotonic()
        cwd = state.workspace
        if workdir is not None:
            rel = os.path.relpath(os.path.normpath(workdir), state.workdir)
            if rel.startswith(".."):
                raise exception.InvalidError(f"fake modal: workdir {workdir} is outside the sandbox workdir")
            cwd = state.workspace / rel
        home = str(state.root / "home")
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LANG": "C.UTF-8"}
        full_env.update(state.env)
        for secret in secrets or ():
            full_env.update({k: v for k, v in secret.env_dict.items() if v is not None})
        full_env.update({k: v for k, v in (env or {}).items() if v is not None})
        if shutil.which(args[0], path=full_env["PATH"]) is None and not os.access(cwd / args[0], os.X_OK):
            # A missing program ends like a shell's "command not found" (exit 127), not as an SDK error.
            args = ("/bin/sh", "-c", 'echo "$0: command not found" >&2; exit 127', args[0])
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=cwd, env=full_env, start_new_session=True,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        state.pids.add(proc.pid)
        return ContainerProcess(proc, timeout, text)

    @_synced
    async def snapshot_filesystem(self, timeout: int = 55, *, ttl: int | None = 2592000) -> Image:
        self._modal._record("Sandbox.snapshot_filesystem", {"timeout": timeout, "ttl": ttl})
        await self._modal._gate("Sandbox.snapshot_filesystem")
        state = self._live()
        image_id = f"im-{uuid.uuid4().hex[:20]}"
        target = self._modal.root / "images" / image_id
        shutil.copytree(state.workspace, target, symlinks=True, ignore=_special_files)
        image = Image(files_dir=target)
        image.object_id = image_id
        self._modal.images[image_id] = image
        return image

    @_synced
    async def tunnels(self, timeout: int = 50) -> dict[int, Tunnel]:
        self._modal._record("Sandbox.tunnels", {"timeout": timeout})
        await self._modal._gate("Sandbox.tunnels")
        state = self._live()
        return {port: Tunnel("127.0.0.1", port) for port in state.encrypted_ports}

    @_synced
    async def set_tags(self, tags: dict[str, str], *, client: Client | None = None) -> None:
        self._modal._record("Sandbox.set_tags", {"tags": tags})
        await self._modal._gate("Sandbox.set_tags")
        self._state.tags = dict(tags)

    @_synced
    async def get_tags(self) -> dict[str, str]:
        self._modal._record("Sandbox.get_tags", {})
        await self._modal._gate("Sandbox.get_tags")
        return dict(self._state.tags)

    @_synced
    async def poll(self) -> int | None:
        self._modal._record("Sandbox.poll", {})
        await self._modal._gate("Sandbox.poll")
        self._modal._expire(self._state)
        return self._state.returncode

    @_synced
    async def terminate(self, *, wait: bool = False) -> int | None:
        self._modal._record("Sandbox.terminate", {"wait": wait})
        await self._modal._gate("Sandbox.terminate")
        self._modal._end(self._state, 137)
        return self._state.returncode if wait else None


def _special_files(directory: str, names: list[str]) -> list[str]:
    """Sockets, fifos and devices are not copied into a snapshot (copytree would fail on them)."""
    skip = []
    for name in names:
        mode = os.lstat(os.path.join(directory, name)).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            skip.append(name)
    return skip


# --- the module ------------------------------------------------------------------------


class FakeModal:
    """Stands in for the ``modal`` module: pass it as ``ModalBackend(config, sdk=FakeModal(tmp_path))``."""

    __version__ = "1.6.4"

    def __init__(self, root: Path, *, authenticated: bool = True, unreachable: bool = False) -> None:
        self.root = Path(root) / "fake-modal"
        self.root.mkdir(parents=True, exist_ok=True)
        self.authenticated = authenticated
        self.unreachable = unreachable
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sandboxes: dict[str, _State] = {}
        self.images: dict[str, Image] = {}
        self.apps: dict[str, App] = {}
        self._injected: dict[str, BaseException] = {}
        self.exception = exception
        self.Tunnel = Tunnel
        self.Secret = Secret
        # Per-instance subclasses, so that class-level calls (Sandbox.create…) reach this state.
        self.Sandbox = type("Sandbox", (Sandbox,), {"_modal": self})
        self.Image = type("Image", (Image,), {"_modal": self})
        self.App = type("App", (_AppApi,), {"_modal": self})
        self.Client = type("Client", (_ClientApi,), {"_modal": self})

    def _record(self, name: str, kwargs: dict[str, Any]) -> None:
        self.calls.append((name, kwargs))

    def calls_of(self, name: str) -> list[dict[str, Any]]:
        """The kwargs of every recorded call named ``name``, in order."""
        return [kwargs for n, kwargs in self.calls if n == name]

    def inject(self, name: str, error: BaseException) -> None:
        """Make the next call named ``name`` (e.g. ``"Sandbox.create"``) raise ``error``."""
        self._injected[name] = error

    async def _gate(self, name: str) -> None:
        if self.unreachable:
            await asyncio.sleep(3600)  # the SDK keeps retrying for about a minute
        if not self.authenticated:
            raise exception.AuthError("Token missing. Could not authenticate client.")
        if name in self._injected:
            raise self._injected.pop(name)

    def _end(self, state: _State, code: int) -> None:
        for pid in state.pids:
            _kill_group(pid)
        state.pids.clear()
        if state.returncode is None:
            state.returncode = code
            shutil.rmtree(state.workspace, ignore_errors=True)

    def _expire(self, state: _State) -> None:
        now = time.monotonic()
        if state.returncode is None and state.timeout is not None and now - state.created >= state.timeout:
            self._end(state, 0)
        idle = state.idle_timeout
        if state.returncode is None and idle is not None and now - state.last_active >= idle:
            self._end(state, 0)

    def kill(self, sandbox_id: str) -> None:
        """End a sandbox as if its container was lost (no terminate, no tag change)."""
        self._end(self.sandboxes[sandbox_id], 137)


class _AppApi:
    _modal: FakeModal

    @_synced
    async def lookup(
        cls, name: str, *, client: Client | None = None, environment_name: str | None = None,
        create_if_missing: bool = False,
    ) -> App:  # fmt: skip
        cls._modal._record("App.lookup", {"name": name, "environment_name": environment_name,
                                          "create_if_missing": create_if_missing})  # fmt: skip
        await cls._modal._gate("App.lookup")
        if name not in cls._modal.apps:
            if not create_if_missing:
                raise exception.NotFoundError(f"App {name!r} not found")
            cls._modal.apps[name] = App(name=name, app_id=f"ap-{uuid.uuid4().hex[:20]}")
        return cls._modal.apps[name]


class _ClientApi:
    _modal: FakeModal

    @_synced
    async def from_credentials(cls, token_id: str, token_secret: str) -> Client:
        cls._modal._record("Client.from_credentials", {"token_id": token_id})
        await cls._modal._gate("Client.from_credentials")
        return Client(token_id=token_id)


def make_fake_modal_backend(tmp_path: Path, **fake_options: Any) -> Any:
    """A ModalBackend over a FakeModal rooted at ``tmp_path`` (used by the shared contract suite)."""
    from sandbox_agents.backends.config import ModalBackendConfig
    from sandbox_agents.backends.modal.backend import ModalBackend
    from sandbox_agents.settings import Settings

    settings = Settings(modal_token_id="fake-token-id", modal_token_secret="fake-token-secret", modal_workspace=None)
    sdk = FakeModal(tmp_path, **fake_options)
    return ModalBackend(ModalBackendConfig(connect_timeout_s=5.0), sdk=sdk, settings=settings)
