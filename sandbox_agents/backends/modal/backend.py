"""The Modal backend: the sandbox contract mapped onto Modal Sandboxes (``modal`` SDK 1.6).

Every SDK call goes through its ``.aio`` variant and through :func:`modal_errors`, so only
our errors leave this module. The SDK module is injected (``sdk=``) so that tests run the
same code against ``tests/fakes/fake_modal.py``; otherwise ``ModalBackendConfig.sdk_module``
(the real ``modal``; the fake's module in tests that run in Ray workers) is imported on first
use, keeping the extra optional. The table of operation → Modal call is in
``docs/modal.md``.

Ids: a sandbox's id is Modal's own object id (``sb-…``), so ``from_id`` works from any
process. What ``from_id``/``list`` need to rebuild a sandbox's spec lives in its Modal tags.

A sandbox's file methods are in ``files.py`` and its exec methods in ``exec.py``
(mixins of :class:`ModalSandbox`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sandbox_agents.backends.base import (
    InstallRequest,
    InstallResult,
    NetworkPolicy,
    Sandbox,
    SandboxSpec,
    SandboxStatus,
    SnapshotRef,
)
from sandbox_agents.backends.config import ModalBackendConfig
from sandbox_agents.backends.modal.exec import ModalExec
from sandbox_agents.backends.modal.image import build_image
from sandbox_agents.backends.modal.support import (
    INSTALL_DOMAINS,
    MAX_TTL_S,
    TAG_STATE,
    find_credentials,
    missing_credentials_message,
    modal_errors,
    spec_from_tags,
    spec_tags,
)
from sandbox_agents.errors import (
    BackendUnavailableError,
    InvalidInputError,
    SandboxDeadError,
    SandboxLimitError,
    SandboxNotFoundError,
)

logger = logging.getLogger(__name__)


#: The profiles a Modal sandbox serves: its one image carries both toolchains (Python 3.11, Node 20 + npm).
MODAL_PROFILES = ("default", "python", "node")


class ModalSandbox(ModalExec):
    """One Modal Sandbox, seen through the contract."""

    def __init__(self, backend: ModalBackend, handle: Any, spec: SandboxSpec) -> None:
        self._backend = backend
        self._sdk = backend.sdk
        self._sb = handle
        self._spec = spec
        self._terminated = False

    @property
    def id(self) -> str:
        return str(self._sb.object_id)

    @property
    def spec(self) -> SandboxSpec:
        return self._spec

    # --- lifecycle ------------------------------------------------------------------

    async def snapshot(self) -> SnapshotRef:
        """``snapshot_filesystem`` → an Image; its id is the snapshot id (Modal keeps it 30 days)."""
        with modal_errors(self._sdk, sandbox_id=self.id):
            image = await self._sb.snapshot_filesystem.aio()
        return SnapshotRef(backend="modal", id=str(image.object_id), sandbox_id=self.id, spec=self._spec)

    async def install(self, request: InstallRequest) -> InstallResult:
        """Install in place: a Modal sandbox's egress is set at create, so it must have network ``install``.

        There is no host-side tree store on Modal; npm's and pip's own caches in the image are
        all the reuse there is (docs/modal.md).
        """
        import time

        from sandbox_agents.backends.install import OUTPUT_TAIL, install_command

        if self._spec.network is NetworkPolicy.NONE:
            return InstallResult(
                ok=False,
                cached=False,
                seconds=0.0,
                output="this Modal sandbox was created without network; installs on Modal need network=install",
            )
        started = time.monotonic()
        lock = "package-lock.json" if request.manager == "npm" else ""
        locked = bool(lock) and bool(await self.list_files(f"{request.dir}/{lock}".lstrip("./")))
        command = install_command(request.manager, locked=locked).replace("/cache/", "/root/.cache/")
        result = await self.exec(command, cwd=request.dir, timeout=request.timeout_s)
        return InstallResult(
            ok=result.exit_code == 0,
            cached=False,
            seconds=time.monotonic() - started,
            output=(result.stdout + result.stderr)[-OUTPUT_TAIL:],
        )

    async def expose(self, port: int) -> str:
        """The TLS tunnel URL of ``port``; the port must be in ``spec.ports`` (Modal opens tunnels at create)."""
        if port not in self._spec.ports:
            raise InvalidInputError(
                f"port {port} was not declared in the spec's ports {list(self._spec.ports)}", field="port"
            )
        with modal_errors(self._sdk, sandbox_id=self.id):
            tunnels = await self._sb.tunnels.aio()
        if port not in tunnels:
            raise SandboxDeadError(f"Modal has no tunnel for port {port}", sandbox_id=self.id)
        return str(tunnels[port].url)

    async def keepalive(self) -> None:
        """Reset Modal's idle timer with a trivial exec (Modal's TTL itself cannot be extended).

        Raises:
            SandboxDeadError: the sandbox has ended.
        """
        if await self.status() is not SandboxStatus.RUNNING:
            raise SandboxDeadError(f"sandbox {self.id} has ended", sandbox_id=self.id)
        await self.exec(["true"], timeout=30)

    async def status(self) -> SandboxStatus:
        """``poll()``: None is running; otherwise our ``kriptik_state`` tag tells terminated from dead."""
        with modal_errors(self._sdk, sandbox_id=self.id):
            code = await self._sb.poll.aio()
            if code is None:
                return SandboxStatus.RUNNING
            if self._terminated:
                return SandboxStatus.TERMINATED
            tags = await self._sb.get_tags.aio()
        return SandboxStatus.TERMINATED if tags.get(TAG_STATE) == "terminated" else SandboxStatus.DEAD

    async def terminate(self) -> None:
        """Mark the sandbox terminated in its tags (so any process sees why it ended), then end it."""
        self._terminated = True
        with modal_errors(self._sdk, sandbox_id=self.id):
            if await self._sb.poll.aio() is None:
                tags = dict(await self._sb.get_tags.aio())
                tags[TAG_STATE] = "terminated"
                await self._sb.set_tags.aio(tags)
            await self._sb.terminate.aio()


class ModalBackend:
    """Creates and finds Modal Sandboxes. The constructor does no I/O; the first call connects.

    Args:
        config: Which App, image and SDK; how many creates at once and how long to retry them.
        sdk: The SDK module (tests pass the fake); ``config.sdk_module`` imported on first use if None.
        settings: Credentials and workspace; the process's settings if None.
        sleep: How a create waits before a retry (tests pass a fake clock's).
        monotonic: The clock a create's retry bound is measured on.
        rng: Random source of the back-off's jitter, in [0, 1).
        pace: The fleet's create pace: reserves a token for one create attempt and answers how long to
            wait for it (``actors/modal_pace.py``); None: no pace beyond this object's own bound.
    """

    name = "modal"
    capabilities: frozenset[str] = frozenset({"exec", "expose"})

    def __init__(
        self,
        config: ModalBackendConfig,
        *,
        sdk: Any | None = None,
        settings: Any | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        pace: Callable[[], Awaitable[float]] | None = None,
    ) -> None:
        self.config = config
        self._sdk = sdk
        self._settings = settings
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng
        self._pace = pace
        self._app: Any | None = None
        self._client: Any | None = None
        self._image: Any | None = None
        self._connect_lock = asyncio.Lock()
        self._create_slots = asyncio.Semaphore(config.max_concurrent_creates)

    @property
    def sdk(self) -> Any:
        """The SDK module: the injected one, else ``config.sdk_module`` (``modal``) imported now."""
        if self._sdk is None:
            name = self.config.sdk_module
            try:
                self._sdk = importlib.import_module(name)
            except ImportError as exc:
                hint = "pip install 'kriptik-fleet[modal]'" if name == "modal" else f"cannot import {name!r}: {exc}"
                raise BackendUnavailableError(f"the Modal SDK is not available: {hint}", backend="modal") from exc
        return self._sdk

    @property
    def settings(self) -> Any:
        if self._settings is None:
            from sandbox_agents.settings import get_settings

            self._settings = get_settings()
        return self._settings

    def use_image(self, image: Any) -> None:
        """Create sandboxes from ``image`` (an already built SDK Image) instead of the definition."""
        self._image = image

    def _environment(self) -> str | None:
        return self.config.environment or self.settings.modal_workspace

    def _client_kwargs(self) -> dict[str, Any]:
        return {} if self._client is None else {"client": self._client}

    async def _connect(self) -> Any:
        """Check credentials offline, then look the App up within ``connect_timeout_s``.

        Raises:
            BackendUnavailableError: no credentials, Modal refused them, or Modal did not answer.
        """
        async with self._connect_lock:
            if self._app is not None:
                return self._app
            if find_credentials(self.settings) is None:
                raise BackendUnavailableError(missing_credentials_message(), backend="modal")
            sdk = self.sdk
            try:
                async with asyncio.timeout(self.config.connect_timeout_s):
                    with modal_errors(sdk):
                        if self.settings.modal_token_id and self.settings.modal_token_secret:
                            self._client = await sdk.Client.from_credentials.aio(
                                self.settings.modal_token_id, self.settings.modal_token_secret
                            )
                        lookup: dict[str, Any] = {"create_if_missing": True, **self._client_kwargs()}
                        if self._environment():
                            lookup["environment_name"] = self._environment()
                        self._app = await sdk.App.lookup.aio(self.config.app_name, **lookup)
            except TimeoutError:
                raise BackendUnavailableError(
                    f"Modal did not answer within {self.config.connect_timeout_s}s "
                    f"(looking up app {self.config.app_name!r}); check the network and MODAL_* settings",
                    backend="modal",
                ) from None
            return self._app

    def create_kwargs(self, spec: SandboxSpec, *, name: str, image: Any, app: Any) -> dict[str, Any]:
        """The ``Sandbox.create`` keyword arguments for ``spec`` (pure; unit-tested directly)."""
        kwargs: dict[str, Any] = {
            "app": app,
            "image": image,
            "name": name,
            "tags": spec_tags(spec, name),
            "env": dict(spec.env),
            "timeout": int(min(spec.timeout_s, MAX_TTL_S)),
            "workdir": spec.workdir,
            "cpu": spec.cpu,
            # (request, limit): the spec's memory is a hard limit, as on the local backend.
            "memory": (spec.memory_mb, spec.memory_mb),
            "encrypted_ports": list(spec.ports),
            **self._client_kwargs(),
        }
        if spec.idle_timeout_s is not None:
            kwargs["idle_timeout"] = max(1, int(min(spec.idle_timeout_s, MAX_TTL_S)))
        if spec.secrets:
            kwargs["secrets"] = [self.sdk.Secret.from_dict(dict(spec.secrets))]
        if spec.network is NetworkPolicy.NONE and spec.ports:
            # The SDK refuses open ports with block_network; an empty CIDR allowlist also allows
            # no egress at all and keeps the tunnels. See docs/modal.md.
            kwargs["outbound_cidr_allowlist"] = []
        elif spec.network is NetworkPolicy.NONE:
            kwargs["block_network"] = True
        elif spec.network is NetworkPolicy.INSTALL:
            # Modal filters egress per sandbox, not per command: an install sandbox may reach the
            # package registries (and nothing else) for its whole life. See docs/modal.md.
            kwargs["outbound_domain_allowlist"] = list(INSTALL_DOMAINS)
        return kwargs

    async def _create(self, spec: SandboxSpec, image: Any) -> ModalSandbox:
        """``Sandbox.create``, at most ``max_concurrent_creates`` at once, retried while Modal refuses it.

        Modal limits how fast a workspace creates sandboxes and how many it runs; past a limit (or
        without capacity) the SDK raises ``ResourceExhaustedError``, its only error for both (the SDK
        retries by itself only where the server names a delay). Such a create is retried with
        exponential back-off and jitter for up to ``create_retry_s``, every retry logged; any other
        error is not retried. The back-off is waited outside the bound, so it holds no slot.

        With a fleet pace, every attempt (a retry too) first takes a token and waits for it, outside the
        bound as well; that wait is the fleet's queue, not Modal refusing, so ``create_retry_s`` leaves it out.

        Raises:
            SandboxLimitError: Modal still refused after ``create_retry_s``; says how many attempts over how long.
        """
        app = await self._connect()
        name = f"kriptik-{uuid.uuid4().hex[:16]}"
        kwargs = self.create_kwargs(spec, name=name, image=image, app=app)
        config, refused = self.config, self.sdk.exception.ResourceExhaustedError
        started, paced = self._monotonic(), 0.0
        attempt = 0
        with modal_errors(self.sdk):  # our SandboxLimitError below passes through it untouched
            while True:
                attempt += 1
                if self._pace is not None and (turn := await self._pace()) > 0:
                    await self._sleep(turn)
                    paced += turn
                try:
                    async with self._create_slots:
                        handle = await self.sdk.Sandbox.create.aio(**kwargs)
                    break
                except refused as exc:
                    waited = self._monotonic() - started - paced
                    ceiling = min(config.create_retry_max_s, config.create_retry_first_s * 2.0 ** min(attempt - 1, 60))
                    delay = ceiling * (0.5 + 0.5 * self._rng())  # at least half the back-off: retries thin out
                    if waited + delay > config.create_retry_s:
                        raise SandboxLimitError(
                            f"Modal refused to create a sandbox {attempt} time(s) over {waited:.1f}s "
                            f"(rate limit or capacity: {exc}); gave up at ModalBackendConfig.create_retry_s="
                            f"{config.create_retry_s:g}s"
                        ) from exc
                    logger.warning(
                        "Modal refused sandbox create %s (attempt %d, %.1fs so far: %s); retrying in %.2fs",
                        name,
                        attempt,
                        waited,
                        exc,
                        delay,
                    )
                    await self._sleep(delay)
        logger.info("created Modal sandbox %s (%s) after %d attempt(s)", handle.object_id, name, attempt)
        return ModalSandbox(self, handle, spec)

    async def create(self, spec: SandboxSpec) -> ModalSandbox:
        """Look up the App and create a sandbox from the image definition.

        Raises:
            BackendUnavailableError: no credentials or Modal unreachable.
        """
        if spec.profile not in MODAL_PROFILES:
            raise InvalidInputError(
                f"unknown sandbox profile {spec.profile!r}; Modal sandboxes have {', '.join(MODAL_PROFILES)}",
                field="profile",
            )
        if self._image is None:
            self._image = build_image(self.sdk, self.config.image)
        return await self._create(spec, self._image)

    async def restore(self, ref: SnapshotRef) -> ModalSandbox:
        """A new sandbox from the snapshot's Image (``Image.from_id``)."""
        if ref.backend != "modal":
            raise InvalidInputError(f"snapshot {ref.id} belongs to backend {ref.backend!r}", field="ref")
        await self._connect()
        with modal_errors(self.sdk, sandbox_id=ref.sandbox_id):
            image = self.sdk.Image.from_id(ref.id, **self._client_kwargs())
        return await self._create(ref.spec, image)

    async def _adopt(self, handle: Any) -> ModalSandbox | None:
        with modal_errors(self.sdk, sandbox_id=str(handle.object_id)):
            spec = spec_from_tags(await handle.get_tags.aio())
        return None if spec is None else ModalSandbox(self, handle, spec)

    async def from_id(self, sandbox_id: str) -> ModalSandbox:
        """Reconnect with ``Sandbox.from_id``; the spec comes back from our tags (secret values blank).

        Raises:
            SandboxNotFoundError: no such sandbox, or not one of ours.
        """
        await self._connect()
        with modal_errors(self.sdk, sandbox_id=sandbox_id):
            handle = await self.sdk.Sandbox.from_id.aio(sandbox_id, **self._client_kwargs())
        sandbox = await self._adopt(handle)
        if sandbox is None:
            raise SandboxNotFoundError(f"Modal sandbox {sandbox_id} was not created by KripTik", sandbox_id=sandbox_id)
        return sandbox

    async def list(self, tags: dict[str, str] | None = None) -> list[Sandbox]:
        """Running sandboxes of our App whose tags include ``tags`` (``Sandbox.list(tags=)``)."""
        app = await self._connect()
        found: list[Sandbox] = []
        with modal_errors(self.sdk):
            async for handle in self.sdk.Sandbox.list.aio(
                app_id=app.app_id, tags=dict(tags or {}) or None, **self._client_kwargs()
            ):
                sandbox = await self._adopt(handle)
                if sandbox is not None:
                    found.append(sandbox)
        return found

    async def close(self) -> None:
        """Forget the App and client handles (sandboxes live on)."""
        self._app = None
        self._client = None
