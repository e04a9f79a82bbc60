"""MergeGate: the Ray actor ``build:{id}:gate`` that owns the main-test sandbox and merges into ``main``.

Thin over :class:`coordinator.merge.gate.MergeGateCore`: it creates the main-test sandbox through
a SandboxProxy (``build:{id}:sbx:main-test``), hands the core its ports — the main repo as a bare
git repository on this host (``KRIPTIK_HOME/gates/{id}.git``, bound into no sandbox), a plain
copy of the tree in the main-test sandbox (renewed through the proxy after a rejection), slots'
files read through their proxies, the verification swarm and the criteria runner on the
main-test sandbox, the bus — and translates calls. Detached and restartable: the contract and
the proxy's name live in ``KRIPTIK_HOME/gates/`` (``actor_state.py``), and the repo itself
(commits with ``Kriptik-Component`` trailers) says what is merged, so a restarted gate picks up
where it was; a merge cut short is rolled back and must be submitted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from actors import handles
from actors.actor_args import validated_arg
from actors.actor_state import SandboxOwnerState, StateFile, file_stem, state_dir
from actors.handles import MAIN_TEST_SID, RayError, gate_name
from actors.pools.proxies import get_proxy, live_or_new_sandbox, release, start_owned_sandbox
from actors.pools.warm import ControlWarmSource
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.bus.events import BusyReport, EventPayload, RunEvent
from coordinator.bus.models import ErrorReport, Event
from coordinator.contracts import IntentContract, UiStep, parse_contract
from coordinator.intent import UiChecker, UiStepError
from coordinator.merge import (
    MAX_TREE_BYTES,
    HostGitRepo,
    MainTestSandbox,
    MergeGateCore,
    MergeRequest,
    MergeResult,
    SandboxDevServers,
    SandboxMainCopy,
    browse,
    sandbox_satisfy,
)
from coordinator.merge.browse import NotInMainError
from coordinator.placement import spec_for_backend
from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.busy import rounded
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.proxy_sandbox import ProxySandbox
from sandbox_agents.verifiers import (
    Chromium,
    Finding,
    Severity,
    SwarmReport,
    VerificationSwarm,
    VerifyTarget,
    default_verifiers,
)

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page

logger = logging.getLogger(__name__)


class GateConfig(BaseModel):
    """What a MergeGate needs; crosses the actor boundary as a dict."""

    model_config = ConfigDict(extra="forbid")

    build_id: str = Field(min_length=1)
    backend: dict[str, Any] = Field(default_factory=lambda: {"type": "local"})
    """Backend config of the main-test sandbox's proxy."""
    redis_url: str | None = None
    """The bus; None publishes nothing."""
    bus_prefix: str = "kriptik"
    spec: SandboxSpec | None = None
    """The main-test sandbox's spec; None: 2 CPUs, 2 GiB, a day's TTL, the contract's dev ports."""
    swarm_timeout_s: float = Field(default=180.0, gt=0)
    """Per-verifier timeout of the merge's swarm run."""
    ready_timeout_s: float = Field(default=30.0, gt=0)
    """Bound on a dev server answering after a (re)start."""
    swarm_must_pass: bool = True
    """False: swarm errors are reported but only failing criteria reject."""
    heartbeat_s: float = Field(default=30.0, gt=0)
    warm_pools: bool = True
    """Take the main-test sandbox's proxy from the Control actor's warm pools (cold when it has none)."""


def default_spec(contract: IntentContract, build_id: str, role: str) -> SandboxSpec:
    """A sandbox spec that can serve every component of the contract."""
    ports = {c.dev_server.port for c in contract.components if c.dev_server is not None}
    if contract.origin is not None:
        ports.add(contract.origin.port)
    return SandboxSpec(
        profile="node" if any(c.profile == "node" for c in contract.components) else "default",
        cpu=2.0,
        memory_mb=2048,
        max_pids=512,
        disk_mb=4096,
        timeout_s=86400,
        ports=tuple(sorted(ports)),
        tags={"build": build_id, "role": role},
    )


def ui_checker(chromium: Chromium, timeout_s: float = 15.0) -> UiChecker:
    """A UI-criterion check in real Chromium: load the page, run the flow's steps in it, then look.

    Args:
        chromium: The browser; each check gets a context of its own that reaches only the page's origin.
        timeout_s: Bounds loading the page, a third of it the selector/text; each step has its own bound.
    """

    async def check(
        url: str, selector: str | None, text: str | None, *, steps: Sequence[UiStep] = ()
    ) -> tuple[bool, list[str]]:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as PlaywrightTimeoutError

        context = await chromium.new_context(url)  # the page reaches its own origin only
        errors: list[str] = []
        try:
            page = await context.new_page()
            page.on("console", lambda m: _console_error(m, errors))
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            await page.goto(url, wait_until="load", timeout=timeout_s * 1000)
            for index, step in enumerate(steps):
                try:
                    await _perform(page, url, step)
                except (PlaywrightError, AssertionError) as exc:  # the step did not hold: that is the answer
                    reason = _playwright_reason(exc) + await _page_now(page, step)
                    raise UiStepError(reason, index=index, action=step.action, console_errors=errors) from None
            locator = page.locator(selector or "body")
            if text:
                locator = locator.filter(has_text=text)
            try:
                await locator.first.wait_for(state="visible", timeout=timeout_s * 1000 / 3)
                return True, errors
            except PlaywrightTimeoutError:  # not visible is the answer, not a failure
                return False, errors
        finally:
            await context.close()

    return check


def _console_error(message: Any, errors: list[str]) -> None:
    if message.type == "error" and "favicon.ico" not in ((message.location or {}).get("url") or ""):
        errors.append(f"console error: {message.text}")


async def _perform(page: Page, url: str, step: UiStep) -> None:
    """One step of a flow, bounded by its ``timeout_s`` through Playwright's auto-wait and ``expect``.

    Actions use the first visible match of a selector; ``expect_*`` look at every match.
    """
    from playwright.async_api import expect

    ms = step.timeout_s * 1000
    if step.action == "fill":
        await _shown(page, step.selector).first.fill(step.value, timeout=ms)
    elif step.action == "click":
        await _shown(page, step.selector).first.click(timeout=ms)
    elif step.action == "press":
        await _shown(page, step.selector).first.press(step.key, timeout=ms)
    elif step.action == "drag":  # mouse down, moves, up: Chromium raises the HTML5 drag events from them
        await _shown(page, step.selector).first.drag_to(_shown(page, step.target).first, timeout=ms)
    elif step.action == "expect_text":
        await expect(_shown(page, step.selector).filter(has_text=step.text).first).to_be_visible(timeout=ms)
    elif step.action == "expect_visible":
        await expect(_shown(page, step.selector).first).to_be_visible(timeout=ms)
    elif step.action == "expect_hidden":
        await expect(_shown(page, step.selector)).to_have_count(0, timeout=ms)
    elif step.action == "reload":
        await page.reload(wait_until="load", timeout=ms)
    else:  # goto: the contract allows only a path, so the page stays on its origin (the only one it may reach)
        parts = urlsplit(url)
        await page.goto(f"{parts.scheme}://{parts.netloc}{step.path}", wait_until="load", timeout=ms)


def _shown(page: Page, selector: str) -> Locator:
    return page.locator(selector).filter(visible=True)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
REASON_CAP = 800  # most characters of Playwright's message kept in a failed step's evidence


def _playwright_reason(exc: BaseException) -> str:
    """Playwright's message and call log, without colour codes, blank lines and the page's whole aria tree."""
    text = _ANSI.sub("", str(exc)).split("\nAria snapshot:")[0]
    text = "\n".join(line.rstrip() for line in text.splitlines() if line.strip())
    return text if len(text) <= REASON_CAP else text[: REASON_CAP - 1] + "…"


async def _page_now(page: Page, step: UiStep) -> str:
    """What the failed step's selectors match now: tells "absent" from "hidden" from "other text"."""
    from playwright.async_api import Error as PlaywrightError

    notes = ""
    for selector in filter(None, [getattr(step, "selector", None), getattr(step, "target", None)]):
        with contextlib.suppress(PlaywrightError):  # an invalid selector, a closed page: Playwright's message says so
            total, texts = await page.locator(selector).count(), await _shown(page, selector).all_inner_texts()
            notes += f"\nnow {selector!r} matches {total} elements, {len(texts)} visible"
            notes += "".join(f"\n  {t.strip()[:200]!r}" for t in texts[:3])
    return notes


class _Events:
    """The core's event port over the bus: merge events to the log, findings to the team's errors channel."""

    def __init__(self, bus: ContextBus | None, build_id: str) -> None:
        self.bus = bus
        self.build_id = build_id
        self._open: dict[str, list[ErrorReport]] = {}

    async def emit(self, event: EventPayload) -> None:
        """Publish ``event``; a verdict carries the build's id, as the run's own events do."""
        if self.bus is not None:
            if isinstance(event, RunEvent):
                event = event.for_build(self.build_id)
            await self.bus.publish(self.build_id, Event.of(event))

    async def report_findings(self, component: str, findings: list[Finding]) -> None:
        """Errors to the component's team (source ``merge:{component}``); an empty list resolves the last ones."""
        if self.bus is None:
            return
        source = f"merge:{component}"
        reports = [
            ErrorReport(source=source, message=f"[{component}] {f.rule}: {f.message}", file=f.file, line=f.line)
            for f in findings
            if f.severity == Severity.ERROR
        ][:50]
        keys = {r.error_key() for r in reports}
        gone = [
            r.model_copy(update={"resolved": True}) for r in self._open.get(component, []) if r.error_key() not in keys
        ]
        self._open[component] = reports
        if reports or gone:
            await self.bus.publish_many(self.build_id, [*reports, *gone])


class MergeGateActor:
    """A build's merge gate. Construct through :func:`start_gate`.

    Args:
        config: A :class:`GateConfig` as a dict.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = cfg = validated_arg(GateConfig, config, "config")
        self._state_file = StateFile("gates", cfg.build_id, SandboxOwnerState)
        self._bus = (
            ContextBus(cfg.redis_url, BusConfig(prefix=cfg.bus_prefix), sender=gate_name(cfg.build_id))
            if cfg.redis_url
            else None
        )
        self._chromium = Chromium()
        self._browser: asyncio.Task[None] | None = None
        self._proxy: Any = None
        self._state: SandboxOwnerState | None = None
        self._core: MergeGateCore | None = None

    # --- wiring ---------------------------------------------------------------------------

    async def _wire(self, state: SandboxOwnerState) -> MergeGateCore:
        cfg = self.config
        if self._proxy is None:  # a restarted gate: its proxy may have died with the Ray it ran on
            source = ControlWarmSource(cfg.backend) if cfg.warm_pools else None
            self._proxy, renewed = await live_or_new_sandbox(
                cfg.build_id, MAIN_TEST_SID, cfg.backend, state.spec, heartbeat_s=cfg.heartbeat_s, source=source
            )
            if renewed is not None:  # main is written into it from the repo when the core starts (_restore)
                state = state.model_copy(update={"sandbox_id": renewed})
                self._state_file.save(state)
        sandbox = MainTestSandbox(ProxySandbox(self._proxy, state.sandbox_id, state.spec))
        swarm = VerificationSwarm(default_verifiers(self._chromium), timeout_s=cfg.swarm_timeout_s)

        async def verify(target: VerifyTarget) -> SwarmReport:
            return await swarm.run(sandbox, target)

        contract = parse_contract(state.contract)
        core = MergeGateCore(
            contract,
            HostGitRepo(repo_dir(cfg.build_id)),
            _slot_reader(),
            verify,
            sandbox_satisfy(sandbox, ui_checker(self._chromium)),
            SandboxDevServers(sandbox, ready_timeout_s=cfg.ready_timeout_s, contract=contract),
            _Events(self._bus, cfg.build_id),
            copy=SandboxMainCopy(sandbox, self._renew),
            swarm_must_pass=cfg.swarm_must_pass,
        )
        self._state = state  # before start(): a restarted gate renews its sandbox there
        await core.start()
        self._core = core
        if _shows_pages(contract) and self._browser is None:
            self._browser = asyncio.get_running_loop().create_task(self._start_browser())
        return core

    async def _start_browser(self) -> None:
        """Start Chromium while the build's teams work, so the first merge with a page does not wait for it."""
        try:
            await self._chromium.browser()
        except Exception as exc:  # noqa: BLE001 - the first check that needs it starts it again and reports why
            logger.warning("gate %s: the browser did not start ahead of the merges: %r", self.config.build_id, exc)

    async def _renew(self) -> ProxySandbox:
        """A brand-new main-test sandbox from the same proxy (the old one ends, and every process in it)."""
        assert self._state is not None
        cfg, spec = self.config, self._state.spec
        await self._proxy.terminate.remote()
        sandbox_id = await self._proxy.create.remote(spec, cfg.build_id, MAIN_TEST_SID)
        await self._proxy.set_active.remote(True)
        self._state = self._state.model_copy(update={"sandbox_id": sandbox_id})
        self._state_file.save(self._state)
        logger.info("gate %s: new main-test sandbox %s", cfg.build_id, sandbox_id)
        return ProxySandbox(self._proxy, sandbox_id, spec)

    async def _ready(self) -> MergeGateCore:
        if self._core is not None:
            return self._core
        try:
            state = self._state_file.load()
        except FileNotFoundError:
            raise InvalidInputError("the gate is not started: call start(contract_json) first", field="gate") from None
        return await self._wire(state)

    # --- the actor's methods ----------------------------------------------------------------

    async def start(self, contract_json: str) -> str:
        """Create (or reconnect to) the main-test sandbox and its repo; returns the sandbox's id."""
        if self._state_file.exists():
            await self._ready()
            assert self._state is not None
            return self._state.sandbox_id
        contract = parse_contract(json.loads(contract_json) if isinstance(contract_json, str) else contract_json)
        cfg = self.config
        spec = cfg.spec or default_spec(contract, cfg.build_id, MAIN_TEST_SID)
        spec = spec_for_backend(spec, cfg.backend, installs=any(c.packages for c in contract.components))
        source = ControlWarmSource(cfg.backend) if cfg.warm_pools else None
        name, self._proxy, sandbox_id = await start_owned_sandbox(
            cfg.build_id, MAIN_TEST_SID, cfg.backend, spec, heartbeat_s=cfg.heartbeat_s, source=source
        )
        state = SandboxOwnerState(
            contract=contract.model_dump(mode="json"), proxy=name, sandbox_id=sandbox_id, spec=spec
        )
        self._state_file.save(state)
        await self._wire(state)
        logger.info("gate %s: main-test sandbox %s", cfg.build_id, sandbox_id)
        return sandbox_id

    async def admit(self, request: MergeRequest | dict[str, Any]) -> MergeResult:
        """Merge a slot's component when its turn comes, only if the swarm and criteria pass."""
        checked = validated_arg(MergeRequest, request, "request")
        result = await (await self._ready()).admit(checked)
        await self._report_gate_time(checked, result)
        return result

    async def _report_gate_time(self, request: MergeRequest, result: MergeResult) -> None:
        """``busy.report`` (source ``gate``): when commands ran in the main-test sandbox during this attempt.

        Attempts run one at a time and the attempt's own duration bounds the window, so the
        commands of a merge queued behind another are not counted twice.
        """
        if self._bus is None or self._proxy is None:
            return
        try:
            intervals = await self._proxy.busy.remote(time.time() - result.duration_s)
        except RayError as exc:  # the proxy restarted or is gone: a lost figure, not a failed merge
            logger.info("gate %s: no busy intervals of the main-test sandbox: %s", self.config.build_id, exc)
            return
        seconds = round(sum(end - start for start, end in intervals), 3)
        event = BusyReport(
            component=request.component,
            source="gate",
            slot=request.slot,
            intervals=rounded(intervals),
            seconds=seconds,
        )
        try:
            await self._bus.publish(self.config.build_id, Event.of(event))
        except Exception as exc:  # noqa: BLE001 - the merge's outcome stands; only a figure is lost
            logger.warning("gate %s: publishing the busy report failed: %r", self.config.build_id, exc)

    async def head(self) -> str:
        return await (await self._ready()).head()

    async def tree_hash(self) -> str:
        return await (await self._ready()).tree_hash()

    async def tree(self, max_bytes: int = MAX_TREE_BYTES) -> dict[str, bytes]:
        return await (await self._ready()).tree(max_bytes)

    async def merged(self) -> list[str]:
        return (await self._ready()).merged()

    async def held(self) -> dict[str, list[str]]:
        """Components waiting for their dependencies, and what each waits for."""
        return (await self._ready()).held()

    async def sandbox_id(self) -> str | None:
        return self._state.sandbox_id if self._state else None

    # --- reads of main for the builder view: the repo only, so a finished build's sandbox is not woken ---

    def _main(self) -> HostGitRepo:
        repo = HostGitRepo(repo_dir(self.config.build_id))
        if not (repo.git_dir / "HEAD").exists():
            raise NotInMainError(f"build {self.config.build_id} has no main yet")
        return repo

    async def main_tree(self) -> dict[str, Any]:
        """Main's files (``MainTreeView`` as JSON)."""
        return (await browse.main_tree(self._main())).model_dump(mode="json")

    async def main_file(self, path: str) -> dict[str, Any]:
        """One file of main, bounded (``MainFileView`` as JSON)."""
        return (await browse.main_file(self._main(), path)).model_dump(mode="json")

    async def merge_diff(self, commit: str) -> dict[str, Any]:
        """A merge commit against its parent, bounded (``MergeDiffView`` as JSON)."""
        return (await browse.merge_diff(self._main(), commit)).model_dump(mode="json")

    async def close(self) -> None:
        """Terminate the main-test sandbox (and its proxy) and forget the gate's state."""
        build_id = self.config.build_id
        try:
            state = self._state_file.load()
        except (FileNotFoundError, ValueError):  # never started (or the state is unreadable): no sandbox of ours
            state = None
        if state is not None:
            try:
                await release(self._proxy or get_proxy(build_id, MAIN_TEST_SID), state.proxy)
            except ValueError:  # its proxy is gone already; the sandbox ends with its TTL
                logger.warning("gate %s: proxy %s of sandbox %s is gone", build_id, state.proxy, state.sandbox_id)
        self._state_file.remove()
        HostGitRepo(repo_dir(build_id)).destroy()
        self._core = self._state = self._proxy = None
        if self._browser is not None:
            self._browser.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # the start logs its own failure
                await self._browser
        try:
            await self._chromium.close()
        except Exception as exc:  # noqa: BLE001 - the gate is killed next, and Chromium with it
            logger.warning("gate %s: closing Chromium failed: %r", build_id, exc)
        if self._bus is not None:
            try:
                await self._bus.aclose(flush_timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - what the bus still held is lost
                logger.warning("gate %s: closing the bus failed: %r", build_id, exc)


def _shows_pages(contract: IntentContract) -> bool:
    """Whether merges of the contract load pages in Chromium (a frontend's visual check, UI criteria)."""
    return any(c.kind == "frontend" for c in contract.components) or any(
        c.type == "ui" for c in contract.success_criteria
    )


def repo_dir(build_id: str) -> Path:
    """Where a build's main repo lives: a directory of the gate's host that no sandbox binds."""
    return state_dir("gates") / f"{file_stem(build_id)}.git"


def _slot_reader() -> Callable[[MergeRequest, str], Awaitable[bytes]]:
    """Reads a file of the requesting slot through the slot's proxy (proxies looked up once per slot)."""
    proxies: dict[tuple[str, str], Any] = {}

    async def fetch(request: MergeRequest, path: str) -> bytes:
        key = (request.build_id, request.slot)
        if key not in proxies:
            proxies[key] = get_proxy(*key)
        return bytes(await proxies[key].read_file.remote(path))

    return fetch


MergeGate = handles.actor_class(MergeGateActor, restartable=True, max_concurrency=64)


def start_gate(config: GateConfig | dict[str, Any]) -> Any:
    """Start the detached, named, restartable gate ``build:{id}:gate`` (call ``start(contract_json)`` next)."""
    config = validated_arg(GateConfig, config, "config")
    return handles.start(MergeGate, gate_name(config.build_id), config.model_dump(mode="json"))


async def stop_gate(handle: Any) -> None:
    """Close the gate (its main-test sandbox goes) and kill the actor for good."""
    await handles.stop(handle, handle.close.remote)
