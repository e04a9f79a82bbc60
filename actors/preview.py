"""Preview: the Ray actor ``build:{id}:preview`` that serves verified ``main`` to the user (Phase 5).

It owns a preview sandbox of its own (never the main-test one), receives only ``main``'s tree
after each accepted merge (:meth:`PreviewActor.refresh`), restarts the dev servers of the
merged components and exposes ONE stable URL for the build: the primary UI component's port
(the first ``frontend`` with a dev server, else the first component with one). Screenshots come
from Chromium (periodically, soon after each refresh, and on demand) and the last few are kept per
build (``coordinator/screenshots.py``); they leave the actor only as bytes through its methods.
:meth:`PreviewActor.take_control` snapshots the preview into a NEW sandbox the user may change:
nothing ever flows back from it.

State (contract, proxy names, the hashes of the files it holds) lives in
``KRIPTIK_HOME/previews/`` (``actor_state.py``) so a restarted actor reconnects to the same sandbox and URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors import handles
from actors.actor_args import validated_arg
from actors.actor_state import SandboxOwnerState, StateFile, file_stem, state_dir
from actors.handles import PREVIEW_SID, gate_name, preview_name, proxy_name
from actors.merge_gate import default_spec
from actors.pools.proxies import find_proxy, get_proxy, live_or_new_sandbox, release, start_owned_sandbox
from actors.pools.warm import ControlWarmSource
from actors.sandbox_proxy import start_proxy
from coordinator.clock import SystemClock
from coordinator.contracts import Component, IntentContract, parse_contract, primary_component
from coordinator.merge import SandboxDevServers, is_junk, sha256_of
from coordinator.placement import spec_for_backend
from coordinator.screenshots import ScreenshotSeries, ShotSchedule, tree_digest
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.errors import InvalidInputError, SandboxError
from sandbox_agents.proxy_sandbox import ProxySandbox
from sandbox_agents.verifiers import Chromium, Finding

logger = logging.getLogger(__name__)


class PreviewConfig(BaseModel):
    """What a Preview needs; crosses the actor boundary as a dict."""

    model_config = ConfigDict(extra="forbid")

    build_id: str = Field(min_length=1)
    backend: dict[str, Any] = Field(default_factory=lambda: {"type": "local"})
    spec: SandboxSpec | None = None
    """The preview sandbox's spec; None: the gate's default (every dev port of the contract)."""
    ready_timeout_s: float = Field(default=30.0, gt=0)
    screenshot_every_s: float = Field(default=60.0, ge=0)
    """Period of the automatic screenshots, which start at the first refresh; 0 turns them all off."""
    screenshot_gap_s: float = Field(default=10.0, ge=0)
    """Least time between a screenshot and the one a refresh asks for (a burst of merges gets one)."""
    screenshots_kept: int = Field(default=30, ge=1)
    """Screenshots kept per build (``screenshots()``); the oldest goes past it."""
    viewport: tuple[int, int] = (1280, 720)
    heartbeat_s: float = Field(default=30.0, gt=0)
    warm_pools: bool = True
    """Take the preview sandbox's proxy from the Control actor's warm pools (cold when it has none)."""


class _PreviewState(SandboxOwnerState):
    files: dict[str, str] = Field(default_factory=dict)
    """Path → sha256 of what the preview holds from ``main``."""
    serving: list[str] = Field(default_factory=list)
    """Components whose dev servers run."""
    takeovers: list[str] = Field(default_factory=list)
    """Proxy names of the take-over sandboxes."""


def primary(contract: IntentContract) -> Component | None:
    """The component the preview URL shows: the first frontend with a dev server, else the first server."""
    return primary_component(contract)


def origin_port(contract: IntentContract) -> int:
    """The port the app is seen on: the origin router's (``contract.origin``), else the primary page's server."""
    comp = primary(contract)
    if comp is None or comp.dev_server is None:
        raise InvalidInputError("no component of the contract has a dev server to preview", field="contract")
    return contract.origin.port if contract.origin is not None else comp.dev_server.port


class PreviewActor:
    """A build's live preview. Construct through :func:`start_preview`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = validated_arg(PreviewConfig, config, "config")
        self._state_file = StateFile("previews", self.config.build_id, _PreviewState)
        self._state: _PreviewState | None = None
        self._proxy: Any = None
        self._chromium = Chromium()
        self._findings: list[Finding] = []
        self._ticker: asyncio.Task[None] | None = None
        self._clock = SystemClock()
        self._shots = ScreenshotSeries(
            state_dir("previews") / file_stem(self.config.build_id) / "screenshots",
            self.config.screenshots_kept,
            self._clock,
        )
        self._schedule = ShotSchedule(self.config.screenshot_every_s, self.config.screenshot_gap_s)

    # --- plumbing ---------------------------------------------------------------------------

    def _save(self) -> None:
        assert self._state is not None
        self._state_file.save(self._state)

    def _ready_state(self) -> _PreviewState:
        if self._state is None:
            try:
                self._state = self._state_file.load()
            except FileNotFoundError:
                raise InvalidInputError(
                    "the preview is not started: call start(contract_json)", field="preview"
                ) from None
        return self._state

    def _ready(self) -> tuple[_PreviewState, ProxySandbox]:
        self._ready_state()
        assert self._state is not None
        if self._proxy is None:
            self._proxy = get_proxy(self.config.build_id, PREVIEW_SID)
        return self._state, ProxySandbox(self._proxy, self._state.sandbox_id, self._state.spec)

    def _contract(self) -> IntentContract:
        return parse_contract(self._ready()[0].contract)

    # --- lifecycle --------------------------------------------------------------------------

    async def _reconnect(self) -> None:
        """Reach the saved sandbox's proxy, or a new sandbox when it died with its Ray (then empty: the
        next refresh writes all of main and starts the servers again)."""
        if self._proxy is not None:
            return
        state, cfg = self._ready_state(), self.config
        source = ControlWarmSource(cfg.backend) if cfg.warm_pools else None
        self._proxy, renewed = await live_or_new_sandbox(
            cfg.build_id, PREVIEW_SID, cfg.backend, state.spec, heartbeat_s=cfg.heartbeat_s, source=source
        )
        if renewed is not None:
            self._state = state.model_copy(update={"sandbox_id": renewed, "files": {}, "serving": []})
            self._save()

    async def start(self, contract_json: str) -> str:
        """Create (or reconnect to) the preview sandbox; returns its id."""
        if self._state_file.exists():
            await self._reconnect()
            return self._ready()[0].sandbox_id
        contract = parse_contract(json.loads(contract_json) if isinstance(contract_json, str) else contract_json)
        cfg = self.config
        spec = cfg.spec or default_spec(contract, cfg.build_id, PREVIEW_SID)
        spec = spec_for_backend(spec, cfg.backend, installs=any(c.packages for c in contract.components))
        source = ControlWarmSource(cfg.backend) if cfg.warm_pools else None
        name, self._proxy, sandbox_id = await start_owned_sandbox(
            cfg.build_id, PREVIEW_SID, cfg.backend, spec, heartbeat_s=cfg.heartbeat_s, source=source
        )
        self._state = _PreviewState(
            contract=contract.model_dump(mode="json"), proxy=name, sandbox_id=sandbox_id, spec=spec
        )
        self._save()
        return sandbox_id

    async def refresh(self, tree: dict[str, bytes] | None = None, merged: list[str] | None = None) -> str:
        """Bring the preview to ``main``: write what changed, delete what left, restart the dev servers.

        Args:
            tree: ``main``'s files (``MergeGate.tree()``); None fetches them from the build's gate.
            merged: Components whose servers to run; None asks the gate (or, without one, every server).

        Returns:
            The preview URL (stable for the build).
        """
        await self._reconnect()
        state, sandbox = self._ready()
        if tree is None or merged is None:
            gate = handles.get(gate_name(self.config.build_id))
            tree = await gate.tree.remote() if tree is None else tree
            merged = await gate.merged.remote() if merged is None else merged
        wanted = {p: sha256_of(b) for p, b in tree.items() if not is_junk(p)}
        for path in sorted(set(state.files) - set(wanted)):
            try:
                await sandbox.remove(path)
            except SandboxError as exc:  # a stale file left behind is shown, not fatal
                logger.warning("preview of %s: removing %s failed: %s", self.config.build_id, path, exc)
        for path, digest in wanted.items():
            if state.files.get(path) != digest:
                await sandbox.write_file(path, tree[path])
        state.files = wanted
        contract = self._contract()
        serving = [c for c in contract.components if c.name in merged]
        servers = SandboxDevServers(sandbox, ready_timeout_s=self.config.ready_timeout_s, contract=contract)
        for comp in contract.components:  # a server of a component not merged (any more) must not linger
            if comp.dev_server is not None and comp not in serving:
                await servers.stop(comp.dev_server.port)
        # Hot-reloading servers (Vite) stay up: they pick up the files just written, and an open page
        # updates in place (HMR). The others restart on the new tree.
        _, self._findings = await servers.restart(serving, keep_hot=True)
        state.serving = [c.name for c in serving if c.dev_server is not None]
        self._save()
        self._tick()
        return await self.expose()

    async def expose(self) -> str:
        """The ONE preview URL of the build: the origin router's port, else the primary UI component's."""
        return await self._ready()[1].expose(origin_port(self._contract()))

    async def urls(self) -> dict[str, str]:
        """Component name → URL of each component with a dev server."""
        _, sandbox = self._ready()
        return {
            c.name: await sandbox.expose(c.dev_server.port)
            for c in self._contract().components
            if c.dev_server is not None
        }

    async def findings(self) -> list[Finding]:
        """Dev servers that did not come up at the last refresh."""
        return list(self._findings)

    async def screenshot(self, path: str = "/") -> bytes:
        """A PNG of ``path`` on the preview, taken now in Chromium and kept in the build's series.

        The series (:meth:`screenshots`) holds the last ``screenshots_kept``; a PNG identical to
        the newest one is returned but not kept again.
        """
        from playwright.async_api import TimeoutError as PlaywrightTimeoutError

        url = (await self.expose()).rstrip("/") + "/" + path.lstrip("/")
        tree = tree_digest(self._ready()[0].files)  # what the page is about to load from
        context = await self._chromium.new_context(
            url, viewport={"width": self.config.viewport[0], "height": self.config.viewport[1]}
        )
        try:
            page = await context.new_page()
            await page.goto(url, wait_until="load", timeout=20_000)
            with contextlib.suppress(PlaywrightTimeoutError):  # a polling page never goes idle; what loaded is enough
                await page.wait_for_load_state("networkidle", timeout=2_000)
            shot: bytes = await page.screenshot(type="png")
        finally:
            await context.close()
        await asyncio.to_thread(self._shots.add, shot, tree=tree, path="/" + path.lstrip("/"))
        return shot

    async def screenshots(self) -> list[dict[str, Any]]:
        """The kept screenshots, newest first: ``{name, taken_at, size, path, tree}`` each."""
        shots = await asyncio.to_thread(self._shots.entries)
        return [shot.model_dump(exclude={"digest"}) for shot in shots]

    async def screenshot_png(self, name: str) -> bytes:
        """The PNG of the kept screenshot ``name`` (a name from :meth:`screenshots`, nothing else).

        Raises:
            InvalidInputError: ``name`` is not a screenshot's name (a path, say).
            ScreenshotNotFoundError: No kept screenshot has that name.
        """
        return await asyncio.to_thread(self._shots.read, name)

    def _tick(self) -> None:
        """After a refresh: a screenshot as soon as the gap allows, and the periodic ticker running."""
        if self.config.screenshot_every_s <= 0:
            return
        self._schedule.refreshed()
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._screenshots())

    async def _screenshots(self) -> None:
        while True:
            if self._schedule.due(self._clock.monotonic()):
                self._schedule.started(self._clock.monotonic())
                try:
                    await self.screenshot("/")
                except Exception as exc:  # a page that fails to load is a missing screenshot, not a dead actor
                    logger.info("preview screenshot of %s failed: %s", self.config.build_id, exc)
            await self._clock.sleep(min(self.config.screenshot_every_s, 1.0))

    async def take_control(self) -> str:
        """Restore a snapshot of the preview into a NEW sandbox with its servers running; returns its URL.

        The user may change that sandbox freely; it is never written back to the build.
        """
        state, _ = self._ready()
        ref = await self._proxy.snapshot.remote()
        name = proxy_name(self.config.build_id, f"takeover-{len(state.takeovers) + 1}")
        handle = start_proxy(name, self.config.backend, heartbeat_s=self.config.heartbeat_s)
        sandbox_id = await handle.restore.remote(ref)
        state.takeovers.append(name)
        self._save()
        contract = self._contract()
        sandbox = ProxySandbox(handle, sandbox_id, state.spec)
        serving = [c for c in contract.components if c.name in state.serving or (c.packages and c.dev_server is None)]
        await SandboxDevServers(sandbox, ready_timeout_s=self.config.ready_timeout_s, contract=contract).restart(
            serving
        )
        return await sandbox.expose(origin_port(contract))

    async def takeovers(self) -> list[str]:
        """Proxy names of the take-over sandboxes (``build:{id}:sbx:takeover-{n}``)."""
        return list(self._ready()[0].takeovers)

    async def sandbox_id(self) -> str | None:
        return self._state.sandbox_id if self._state else None

    async def close(self) -> None:
        """Terminate the preview sandbox and every take-over sandbox, and forget the state and the screenshots."""
        build_id = self.config.build_id
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # the ticker logs its own failures
                await self._ticker
        try:
            state: _PreviewState | None = self._state or self._state_file.load()
        except (FileNotFoundError, ValueError):  # never started (or the state is unreadable): no sandbox of ours
            state = None
        for name in [state.proxy, *state.takeovers] if state is not None else []:
            handle = find_proxy(name)
            if handle is None:  # its proxy is gone already; the sandbox ends with its TTL
                logger.warning("preview of %s: proxy %s is gone; its sandbox was not terminated", build_id, name)
                continue
            await release(handle, name)
        self._state_file.remove()
        await asyncio.to_thread(self._shots.clear)  # only this actor could serve them
        self._state = self._proxy = None
        try:
            await self._chromium.close()
        except Exception as exc:  # noqa: BLE001 - the actor is killed next, and Chromium with it
            logger.warning("preview of %s: closing Chromium failed: %r", build_id, exc)


Preview = handles.actor_class(PreviewActor, restartable=True, max_concurrency=64)


def start_preview(config: PreviewConfig | dict[str, Any]) -> Any:
    """Start the detached, named, restartable ``build:{id}:preview`` (call ``start(contract_json)`` next)."""
    config = validated_arg(PreviewConfig, config, "config")
    return handles.start(Preview, preview_name(config.build_id), config.model_dump(mode="json"))


async def stop_preview(handle: Any) -> None:
    """Close the preview (its sandboxes go) and kill the actor for good."""
    await handles.stop(handle, handle.close.remote)
