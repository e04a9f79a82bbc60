"""A faithful fake of the ``modal`` SDK surface the Modal backend uses (SDK 1.6.4).

Modelled on the real signatures and calling convention: every SDK call the backend makes
exists here with the SDK's parameter names, kinds and defaults, async ones are called as
``obj.method.aio(...)``, and an unknown or misplaced argument raises TypeError as the real
function would. ``tests/unit/test_fake_modal_signatures.py`` checks all of that against the
installed ``modal``, so the fake cannot drift from the SDK. The fake imitates only what the
backend calls; anything else is absent rather than approximated.

Behind it is real work: each exec is a real local subprocess (its own process group), each
sandbox a real temp directory onto which the sandbox ``workdir`` maps (the exec ``cwd`` is set
accordingly; nothing else is rewritten, so a command naming ``/workspace/…`` literally sees the
host path). ``snapshot_filesystem`` copies the workspace into an Image that ``Sandbox.create``
(``image=``) restores; ``tunnels()`` returns URLs that really reach the sandbox's port from the
host loopback. Each sandbox has a ``/tmp`` of its own and, without egress (``block_network``,
or an empty CIDR allowlist), a network of its own, as a Modal container does
(``fake_modal_ns.py``): its execs run in its namespaces, so its ports are its own and reached
from outside through its tunnels only; a sandbox with egress shares the host's network (its
tunnel is the host port itself). Ending a sandbox ends every process in it, also one an exec
left running in a session of its own. ``timeout`` and ``idle_timeout`` end a sandbox as Modal
does (checked whenever the sandbox is used or polled); idle means no exec running and no file
call or stdin write since. The client-side checks of the SDK's ``Sandbox.create``/``exec`` are
mirrored (an App is required, absolute workdirs, no open ports or allowlists with
``block_network``, valid names).

Like Modal's, the fake's objects are seen alike by every process: sandboxes, images and apps are
records under the fake's root (``fake_modal_store.py``), read afresh on each call, so a sandbox
created in one process can be ``from_id``-ed, listed, snapshotted, restored or terminated from
another (processes of one user on one host). ``tests/fakes/modal_sdk.py`` is the fake as an
importable module, for Ray workers (``ModalBackendConfig(sdk_module="tests.fakes.modal_sdk")``).

What it does not do: isolation beyond /tmp and the network (a sandbox sees the host's other
files and processes), the network policy of a sandbox with egress (domain and CIDR allowlists
are recorded, not enforced), resource limits, GPUs, volumes, PTYs; connections through a tunnel
do not count as activity. Every async SDK call (and ``Image.from_id``) is logged in
``FakeModal.calls`` as a :class:`Call`, with its arguments as passed and as bound, and in the
root's shared log (``FakeModal.shared_calls``: every process's calls, arguments as JSON);
``inject`` makes the next call (or the next N calls) of a name in this process raise, as Modal
refusing creates with ``ResourceExhaustedError`` does; ``authenticated=False`` and
``unreachable=True`` mimic a missing token (``AuthError: Token missing`` at once) and an
unreachable server (the SDK retries ~60 s).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import copy
import dataclasses
import errno
import inspect
import os
import re
import shutil
import signal
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes import fake_modal_ns
from tests.fakes.fake_modal_ns import Namespaces, Process
from tests.fakes.fake_modal_store import Registry, jsonable

#: What ``poll()`` reports for a sandbox past its ``timeout`` (the SDK maps Modal's timeout status
#: to 124). Modal does not document what an ``idle_timeout`` end reports; the fake reports the same.
TIMED_OUT = 124
#: What ``poll()`` reports for a terminated sandbox (the SDK maps Modal's terminated status to 137).
TERMINATED = 137

#: Sandbox names the SDK accepts (``modal._utils.name_utils.is_valid_object_name``).
_VALID_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


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


# --- the SDK's calling convention and the call log --------------------------------------


@dataclass(frozen=True)
class SharedCall:
    """One SDK call as the root's shared log holds it, whichever process made it."""

    name: str
    pid: int
    """The process that made it."""
    on: str | None
    """The id of the object it was made on (``sb-…`` for a sandbox's, its process's and its files' calls)."""
    arguments: dict[str, Any]
    """Bound arguments with defaults, as JSON: SDK objects by id or name, no file data, no secret values."""


@dataclass(frozen=True)
class Call:
    """One SDK call as the code under test made it.

    ``args`` and ``kwargs`` are what the caller passed (``self``/``cls`` left out), so that a test
    can bind them to the real SDK's signature; ``arguments`` names every parameter, defaults
    filled in, for asserting on what the call asked for.
    """

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    arguments: dict[str, Any]


class sdk_call:  # noqa: N801 - used as a decorator
    """An async SDK method of the fake, called as ``x.method.aio(...)`` (a blocking call is refused).

    A call binds its arguments to the method's own signature first, so a wrong argument raises
    TypeError as the SDK does; then it is logged in ``FakeModal.calls`` and may fail as injected
    (or as an unauthenticated/unreachable Modal would) before it runs. On a class it binds the
    class (``Sandbox.create``). ``__wrapped__`` is the implementation, whose signature
    ``tests/unit/test_fake_modal_signatures.py`` compares with the SDK's.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.__wrapped__ = fn
        self.signature = inspect.signature(fn)
        self.name = fn.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = f"{owner._sdk_name}.{name}"  # type: ignore[attr-defined]

    def __get__(self, obj: Any, owner: type) -> Any:
        return _Bound(self, owner if obj is None else obj)

    def bind(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        """Bind a call as Python would (TypeError if the SDK would refuse it) and log it."""
        bound = self.signature.bind(target, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(list(bound.arguments.items())[1:])  # without self/cls
        target._modal._log(Call(self.name, args, kwargs, arguments), target)
        return bound


class lazy_sdk_call(sdk_call):  # noqa: N801
    """A synchronous SDK call that only names a Modal object (``Image.from_id``): logged, never gated.

    The SDK resolves such an object on first use, so an unknown id fails where it is used.
    """

    def __get__(self, obj: Any, owner: type) -> Any:
        target = owner if obj is None else obj

        def call(*args: Any, **kwargs: Any) -> Any:
            bound = self.bind(target, args, kwargs)
            return self.__wrapped__(*bound.args, **bound.kwargs)

        return call


class _Bound:
    """``x.method`` for an async SDK call: ``.aio(...)`` runs it, a blocking call is refused."""

    def __init__(self, call: sdk_call, target: Any) -> None:
        self._call = call
        self._target = target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"fake modal: use `{self._call.name}.aio(...)` from async code")

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        bound = self._call.bind(self._target, args, kwargs)
        modal, name, fn = self._target._modal, self._call.name, self._call.__wrapped__
        if inspect.isasyncgenfunction(fn):
            return _gated_items(modal, name, fn, bound)
        return _gated(modal, name, fn, bound)


async def _gated(modal: FakeModal, name: str, fn: Callable[..., Any], bound: inspect.BoundArguments) -> Any:
    await modal._gate(name)
    return await fn(*bound.args, **bound.kwargs)


async def _gated_items(
    modal: FakeModal, name: str, fn: Callable[..., Any], bound: inspect.BoundArguments
) -> AsyncIterator[Any]:
    await modal._gate(name)
    async for item in fn(*bound.args, **bound.kwargs):
        yield item


# --- small value types -----------------------------------------------------------------


@dataclass(frozen=True)
class Tunnel:
    """Like ``modal.Tunnel``; ``url`` is plain HTTP to a port on the host loopback in the fake."""

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

    def _describe(self) -> dict[str, Any]:
        return {"secret": sorted(self.env_dict)}  # names only: values never reach the shared log


@dataclass
class App:
    name: str
    app_id: str

    def _describe(self) -> dict[str, Any]:
        return {"app": self.name, "app_id": self.app_id}


@dataclass
class Client:
    token_id: str

    def _describe(self) -> dict[str, Any]:
        return {"client": self.token_id}


# --- images ----------------------------------------------------------------------------


class Image:
    """Builder steps are recorded; a snapshot Image carries a copy of the files (``files_dir``)."""

    _sdk_name = "Image"
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

    def _describe(self) -> dict[str, Any]:
        return {"image": self.object_id, "steps": [name for name, _ in self.steps]}

    @sdk_call
    async def build(self, app: App | None = None) -> Image:
        self.object_id = self.object_id or f"im-{uuid.uuid4().hex[:20]}"
        self._modal._save_image(self)
        return self

    @lazy_sdk_call
    def from_id(cls, image_id: str, client: Client | None = None) -> Image:
        image = cls()
        image.object_id = image_id
        return image


# --- processes -------------------------------------------------------------------------


class StreamReader:
    """``proc.stdout``/``proc.stderr``: iterated with ``async for`` as Modal delivers the output."""

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


class StreamWriter:
    """``proc.stdin``: ``write``/``write_eof`` buffer, ``drain`` sends (a write counts as activity)."""

    _sdk_name = "StreamWriter"

    def __init__(self, modal: FakeModal, sandbox_id: str, proc: Process) -> None:
        self._modal = modal
        self._sandbox_id = sandbox_id
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

    @sdk_call
    async def drain(self) -> None:
        stdin = self._proc.stdin
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if self._buffer:
                with self._modal._changing(self._sandbox_id) as state:
                    state.last_active = time.monotonic()
                data = bytes(self._buffer)
                self._buffer.clear()
                await stdin.write_all(data)
            if self._eof:
                stdin.close()


class ContainerProcess:
    """What ``Sandbox.exec`` returns; killed at its ``timeout``, when ``wait()`` reports -1 like the SDK."""

    _sdk_name = "ContainerProcess"

    def __init__(self, modal: FakeModal, sandbox_id: str, proc: Process, timeout: int | None, text: bool) -> None:
        self._modal = modal
        self._sandbox_id = sandbox_id
        self._proc = proc
        self.stdout = StreamReader(proc.stdout, text)
        self.stderr = StreamReader(proc.stderr, text)
        self.stdin = StreamWriter(modal, sandbox_id, proc)
        self._waiter = asyncio.ensure_future(self._watch(sandbox_id, timeout))

    async def _watch(self, sandbox_id: str, timeout: int | None) -> int:
        try:
            code = await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            _kill_group(self._proc.pid)
            await self._proc.wait()
            return -1  # what the SDK's wait() reports for an exec past its deadline
        finally:
            self._proc.stdin.close()  # nothing reads it any more
            with self._modal._changing(sandbox_id) as state:
                state.running.discard(self._proc.pid)
                state.last_active = time.monotonic()
        return 128 - code if code < 0 else code

    @sdk_call
    async def wait(self) -> int:
        return await asyncio.shield(self._waiter)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- sandboxes -------------------------------------------------------------------------


@dataclass
class _State:
    """One sandbox as its record holds it (times are ``time.monotonic``: one clock for the whole host)."""

    object_id: str
    name: str | None
    app: App
    root: Path
    workdir: str
    env: dict[str, str]
    tags: dict[str, str]
    timeout: int
    idle_timeout: int | None
    encrypted_ports: list[int]
    created: float = field(default_factory=time.monotonic)
    #: When the sandbox was last active: an exec ended, a file call or a stdin write was made.
    last_active: float = field(default_factory=time.monotonic)
    returncode: int | None = None
    #: Execs still running: while there is one, the sandbox is not idle.
    running: set[int] = field(default_factory=set)
    #: Its own /tmp, and network and tunnels when it has no egress (``fake_modal_ns.py``); None once ended.
    namespaces: Namespaces | None = None

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    def record(self) -> dict[str, Any]:
        """The JSON record of this state (``from_record`` reads it back)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.update(app=dataclasses.asdict(self.app), root=str(self.root))
        data.update(running=sorted(self.running))
        data.update(namespaces=None if self.namespaces is None else dataclasses.asdict(self.namespaces))
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> _State:
        data = dict(data)
        data.update(app=App(**data["app"]), root=Path(data["root"]))
        data.update(running=set(data["running"]))
        if data["namespaces"] is not None:
            namespaces = dict(data["namespaces"])
            namespaces["tunnels"] = {int(port): host_port for port, host_port in namespaces["tunnels"].items()}
            data["namespaces"] = Namespaces(**namespaces)
        return cls(**data)


class Filesystem:
    """``sb.filesystem``: absolute in-sandbox paths under the workdir, mapped onto the temp dir.

    Each call counts as activity: the SDK runs file calls as execs in the sandbox.
    """

    _sdk_name = "filesystem"

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox
        self._modal = sandbox._modal
        self._sandbox_id = sandbox.object_id

    def _host(self, remote_path: str, op: str) -> Path:
        if not remote_path.startswith("/"):
            raise exception.InvalidError(f"{op}: remote_path must be an absolute path, got {remote_path!r}")
        state = self._sb._live(active=True)
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

    @sdk_call
    async def read_bytes(self, remote_path: str) -> bytes:
        host = self._host(remote_path, "read_bytes")
        with self._os_errors(remote_path):
            return host.read_bytes()

    @sdk_call
    async def write_bytes(self, data: bytes | bytearray | memoryview, remote_path: str) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("data must be bytes-like")
        host = self._host(remote_path, "write_bytes")
        with self._os_errors(remote_path):
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_bytes(bytes(data))

    @sdk_call
    async def remove(self, remote_path: str, *, recursive: bool = False) -> None:
        host = self._host(remote_path, "remove")
        with self._os_errors(remote_path):
            if host.is_dir() and not host.is_symlink():
                shutil.rmtree(host) if recursive else host.rmdir()
            else:
                host.unlink()


class Sandbox:
    """A handle on a fake sandbox: its id; the state is its record, read afresh by every call."""

    _sdk_name = "Sandbox"
    _modal: FakeModal

    def __init__(self, object_id: str) -> None:
        self._object_id = object_id
        self._sandbox_id = object_id

    @property
    def object_id(self) -> str:
        return self._object_id

    @property
    def filesystem(self) -> Filesystem:
        return Filesystem(self)

    def _live(self, *, active: bool = False) -> _State:
        """The sandbox's state if it still runs (and, if ``active``, the call counts as activity)."""
        with self._modal._changing(self._object_id) as state:
            if state.returncode is not None:
                raise exception.SandboxTerminatedError(f"Sandbox {state.object_id} has already finished")
            if active:
                state.last_active = time.monotonic()
        return state

    @sdk_call
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
        # The SDK's own checks, made before anything is sent (modal/sandbox/_common.py).
        if app is None:
            raise exception.InvalidError("Sandboxes require an App when created outside of a Modal container.")
        if timeout is None:
            raise exception.InvalidError("`timeout=None` is only supported for experimental persistent Sandboxes.")
        if not all(isinstance(a, str) for a in args):
            raise exception.InvalidError("All entrypoint arguments must be strings")
        if name is not None and not _VALID_NAME.fullmatch(name):
            raise exception.InvalidError(f"Invalid Sandbox name: '{name}'.")
        if workdir is not None and not workdir.startswith("/"):
            raise exception.InvalidError(f"workdir must be an absolute path, got: {workdir}")
        if block_network and (encrypted_ports or h2_ports or unencrypted_ports):
            raise exception.InvalidError("Cannot specify open ports when `block_network` is enabled")
        if block_network and (outbound_cidr_allowlist is not None or outbound_domain_allowlist is not None):
            raise exception.InvalidError("an outbound allowlist cannot be used when `block_network` is enabled")
        if image is not None and image.object_id is not None and image.files_dir is None:
            known = modal._image(image.object_id)
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
        no_egress = block_network or (outbound_cidr_allowlist is not None and not list(outbound_cidr_allowlist))
        state.namespaces = await fake_modal_ns.start(
            root, own_network=no_egress, ports=state.encrypted_ports, lifetime_s=timeout
        )
        with modal._registry.lock("sandbox-names"):  # one name per app among running sandboxes, host-wide
            running = (s for s in modal.sandboxes.values() if s.returncode is None and s.app.app_id == app.app_id)
            if name is not None and any(s.name == name for s in running):
                modal._end(state, TERMINATED)
                shutil.rmtree(root, ignore_errors=True)
                raise exception.AlreadyExistsError(f"Sandbox with name {name!r} already exists")
            modal._registry.write("sandboxes", object_id, state.record())
        return cls(object_id)

    @sdk_call
    async def from_id(cls, sandbox_id: str, client: Client | None = None) -> Sandbox:
        if cls._modal._state(sandbox_id) is None:
            raise exception.NotFoundError(f"Sandbox with id {sandbox_id} not found")
        return cls(sandbox_id)

    @sdk_call
    async def list(
        cls, *, app_id: str | None = None, tags: dict[str, str] | None = None, client: Client | None = None
    ) -> AsyncIterator[Sandbox]:
        known = cls._modal.sandboxes
        for object_id in sorted(known, key=lambda i: known[i].created):
            with cls._modal._changing(object_id) as state:
                pass  # ends it if its timeout passed, as Modal would have
            if state.returncode is not None or (app_id is not None and state.app.app_id != app_id):
                continue
            if all(state.tags.get(k) == v for k, v in (tags or {}).items()):
                yield cls(object_id)

    @sdk_call
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
        if workdir is not None and not workdir.startswith("/"):
            raise exception.InvalidError(f"workdir must be an absolute path, got: {workdir}")
        if not args or not all(isinstance(a, str) for a in args):
            raise exception.InvalidError("exec needs a command of strings")
        state = self._live(active=True)
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
        assert state.namespaces is not None  # a running sandbox has them
        args = (*fake_modal_ns.enter(state.namespaces, cwd), *args)
        proc = await fake_modal_ns.start_process(args, cwd=cwd, env=full_env)
        with self._modal._changing(state.object_id) as state:
            state.running.add(proc.pid)
            if state.returncode is not None:  # ended by another process while this one was starting
                _kill_group(proc.pid)
        return ContainerProcess(self._modal, state.object_id, proc, timeout, text)

    @sdk_call
    async def snapshot_filesystem(self, timeout: int = 55, *, ttl: int | None = 2592000) -> Image:
        if ttl is not None and ttl <= 0:
            raise exception.InvalidError("ttl must be positive, or None to disable expiry")
        state = self._live()
        image_id = f"im-{uuid.uuid4().hex[:20]}"
        target = self._modal.root / "image-files" / image_id
        shutil.copytree(state.workspace, target, symlinks=True, ignore=_special_files)
        image = self._modal.Image(files_dir=target)
        image.object_id = image_id
        self._modal._save_image(image)
        return image

    @sdk_call
    async def tunnels(self, timeout: int = 50) -> dict[int, Tunnel]:
        state = self._live()
        assert state.namespaces is not None  # a running sandbox has them
        return {port: Tunnel("127.0.0.1", host_port) for port, host_port in state.namespaces.tunnels.items()}

    @sdk_call
    async def set_tags(self, tags: dict[str, str], *, client: Client | None = None) -> None:
        with self._modal._changing(self._object_id) as state:
            state.tags = dict(tags)

    @sdk_call
    async def get_tags(self) -> dict[str, str]:
        return dict(self._modal._existing(self._object_id).tags)

    @sdk_call
    async def poll(self) -> int | None:
        with self._modal._changing(self._object_id) as state:
            return state.returncode

    @sdk_call
    async def terminate(self, *, wait: bool = False) -> int | None:
        with self._modal._changing(self._object_id) as state:
            self._modal._end(state, TERMINATED)
        return state.returncode if wait else None


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
    """Stands in for the ``modal`` module: pass it as ``ModalBackend(config, sdk=FakeModal(tmp_path))``.

    Every FakeModal on the same ``root`` (in this process or another) sees the same sandboxes,
    images and apps, as every client of one Modal account does.
    """

    __version__ = "1.6.4"

    def __init__(self, root: Path, *, authenticated: bool = True, unreachable: bool = False) -> None:
        self.root = Path(root) / "fake-modal"
        self._registry = Registry(self.root)
        self.authenticated = authenticated
        self.unreachable = unreachable
        self.calls: list[Call] = []
        self._injected: dict[str, tuple[BaseException, int]] = {}
        """By call name: the error to raise and how many more calls raise it."""
        self.exception = exception
        self.Tunnel = Tunnel
        self.Secret = Secret
        # Per-instance subclasses, so that class-level calls (Sandbox.create…) reach this state.
        self.Sandbox = type("Sandbox", (Sandbox,), {"_modal": self})
        self.Image = type("Image", (Image,), {"_modal": self})
        self.App = type("App", (_AppApi,), {"_modal": self})
        self.Client = type("Client", (_ClientApi,), {"_modal": self})

    @property
    def sandboxes(self) -> dict[str, _State]:
        """Every sandbox ever created on this root (ended ones too), by id, as their records say now."""
        found = {key: self._state(key) for key in self._registry.keys("sandboxes")}
        return {key: state for key, state in found.items() if state is not None}

    def calls_of(self, name: str) -> list[dict[str, Any]]:
        """The bound arguments (defaults filled in) of every call named ``name`` made through this object."""
        return [call.arguments for call in self.calls if call.name == name]

    def shared_calls(self, name: str) -> list[SharedCall]:
        """Every call named ``name`` made on this root, by any process, in order."""
        return [SharedCall(**entry) for entry in self._registry.calls() if entry["name"] == name]

    def _log(self, call: Call, target: Any) -> None:
        self.calls.append(call)
        on = None if isinstance(target, type) else getattr(target, "_sandbox_id", None)
        entry = {"name": call.name, "pid": os.getpid(), "on": on, "arguments": jsonable(call.arguments)}
        self._registry.log_call(entry)

    def _state(self, sandbox_id: str) -> _State | None:
        record = self._registry.read("sandboxes", sandbox_id)
        return None if record is None else _State.from_record(record)

    def _existing(self, sandbox_id: str) -> _State:
        state = self._state(sandbox_id)
        if state is None:
            raise exception.NotFoundError(f"Sandbox with id {sandbox_id} not found")
        return state

    @contextlib.contextmanager
    def _changing(self, sandbox_id: str) -> Iterator[_State]:
        """The sandbox's state to read and change, under its lock; ended first if past its timeouts.

        Saved when the block ends (also when it raises: a change made before the error stands).
        """
        with self._registry.lock(sandbox_id):
            state = self._existing(sandbox_id)
            self._expire(state)
            try:
                yield state
            finally:
                self._registry.write("sandboxes", sandbox_id, state.record())

    def _save_image(self, image: Image) -> None:
        assert image.object_id is not None
        files = None if image.files_dir is None else str(image.files_dir)
        self._registry.write("images", image.object_id, {"steps": jsonable(image.steps), "files_dir": files})

    def _image(self, image_id: str) -> Image | None:
        record = self._registry.read("images", image_id)
        if record is None:
            return None
        image = self.Image(tuple(tuple(step) for step in record["steps"]), files_dir=None)
        if record["files_dir"] is not None:
            image.files_dir = Path(record["files_dir"])
        image.object_id = image_id
        return image

    def inject(self, name: str, error: BaseException, *, times: int = 1) -> None:
        """Make the next ``times`` calls named ``name`` (e.g. ``"Sandbox.create"``) raise ``error``.

        Each call raises a copy of it, as the SDK raises a new exception for every failed call.
        """
        self._injected[name] = (error, times)

    async def _gate(self, name: str) -> None:
        if self.unreachable:
            await asyncio.sleep(3600)  # the SDK keeps retrying for about a minute
        if not self.authenticated:
            raise exception.AuthError("Token missing. Could not authenticate client.")
        if name in self._injected:
            error, times = self._injected.pop(name)
            if times > 1:
                self._injected[name] = (error, times - 1)
            raise copy.copy(error)

    def _end(self, state: _State, code: int) -> None:
        """End the sandbox: every process in it (whoever started them), its namespaces, its files."""
        state.running.clear()
        if state.namespaces is not None:
            fake_modal_ns.stop(state.namespaces)
            state.namespaces = None
        if state.returncode is None:
            state.returncode = code
            shutil.rmtree(state.workspace, ignore_errors=True)

    def _expire(self, state: _State) -> None:
        """End the sandbox if its ``timeout`` has passed, or its ``idle_timeout`` with nothing running."""
        if state.returncode is not None:
            return
        state.running = {pid for pid in state.running if _alive(pid)}  # its caller's process may have died
        now = time.monotonic()
        idle = state.idle_timeout
        if now - state.created >= state.timeout or (
            idle is not None and not state.running and now - state.last_active >= idle
        ):
            self._end(state, TIMED_OUT)

    def kill(self, sandbox_id: str) -> None:
        """End a sandbox as if its container was lost (no terminate, no tag change)."""
        with self._changing(sandbox_id) as state:
            self._end(state, TERMINATED)

    def end_all(self) -> None:
        """End every sandbox of this root still running, as :meth:`kill` does (a test's teardown)."""
        for sandbox_id, state in self.sandboxes.items():
            if state.returncode is None:
                self.kill(sandbox_id)


class _AppApi:
    _sdk_name = "App"
    _modal: FakeModal

    @sdk_call
    async def lookup(
        cls, name: str, *, client: Client | None = None, environment_name: str | None = None,
        create_if_missing: bool = False,
    ) -> App:  # fmt: skip
        registry = cls._modal._registry
        with registry.lock("apps"):
            record = registry.read("apps", name)
            if record is None:
                if not create_if_missing:
                    raise exception.NotFoundError(f"App {name!r} not found")
                record = {"name": name, "app_id": f"ap-{uuid.uuid4().hex[:20]}"}
                registry.write("apps", name, record)
        return App(**record)


class _ClientApi:
    _sdk_name = "Client"
    _modal: FakeModal

    @sdk_call
    async def from_credentials(cls, token_id: str, token_secret: str) -> Client:
        return Client(token_id=token_id)


def make_fake_modal_backend(tmp_path: Path, **fake_options: Any) -> Any:
    """A ModalBackend over a FakeModal rooted at ``tmp_path`` (used by the shared contract suite)."""
    from sandbox_agents.backends.config import ModalBackendConfig
    from sandbox_agents.backends.modal.backend import ModalBackend
    from sandbox_agents.settings import Settings

    settings = Settings(modal_token_id="fake-token-id", modal_token_secret="fake-token-secret", modal_workspace=None)
    sdk = FakeModal(tmp_path, **fake_options)
    return ModalBackend(ModalBackendConfig(connect_timeout_s=5.0), sdk=sdk, settings=settings)
