"""BuildCoordinator: the Ray actor ``build:{id}`` that runs one build, thin over BuildRun.

It builds :class:`coordinator.build.run.BuildRun`'s ports from the real actors (the Ray-side
adapters in :mod:`actors.build.adapters`: SandboxProxy, SandboxTeam, Swarm, Judge, the
MergeGate and the Preview; the context bus on the build's Redis) and runs the build in a
background task. Detached, ``max_restarts=-1``, ``max_task_retries=0``: after a
crash Ray re-creates it with the same config, and ``__init__`` resumes the run when the store
says the build is running (sandboxes are found again by their proxies' names). Its name,
start and stop go through :mod:`actors.handles`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from actors import handles
from actors.actor_args import validated_arg
from actors.build.adapters import RayFleet, RayGate, RayJudge, RaySwarms, RayTeams
from actors.build.config import CoordinatorConfig, save_config
from actors.handles import RayError, coordinator_name, gate_name, judge_name, preview_name
from actors.hub import start_hub, stop_build_hubs
from actors.merge_gate import ui_checker
from actors.pools.proxies import ProxyPool
from actors.team import stop_build_teams
from coordinator.budget import Budget, BudgetLedger
from coordinator.build.adapters import (
    BusEvents,
    BusInterfaces,
    BusMergeRequests,
    BusProgress,
    ProviderPlanner,
    SandboxSatisfaction,
    SessionNotifier,
    SwarmVerify,
)
from coordinator.build.notify import WebhookConfig, WebhookNotifier
from coordinator.build.notify_events import NotifyingEvents
from coordinator.build.ports import BuildSettings, EventsPort
from coordinator.build.run import BuildPorts, BuildRun
from coordinator.bus.context_bus import BusConfig, ContextBus
from coordinator.clock import SystemClock
from coordinator.contracts import IntentContract
from coordinator.screenshots import ScreenshotNotFoundError, check_name
from coordinator.store.schema import SessionStatus
from coordinator.store.store import Store
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.llm.config import LLMConfig

logger = logging.getLogger(__name__)

# --- the actor ------------------------------------------------------------------------------------


class BuildCoordinatorActor:
    """One build's coordinator. Start through :func:`start_coordinator`.

    Args:
        config: A :class:`CoordinatorConfig` as a dict.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = validated_arg(CoordinatorConfig, config, "config")
        self.build_id = self.config.build_id
        self.store = Store(self.config.store_path).start()
        self.bus = ContextBus(
            self.config.redis_url, BusConfig(prefix=self.config.bus_prefix), sender=coordinator_name(self.build_id)
        )
        self._pool: ProxyPool | None = None
        self._judge = RayJudge(self.config)
        self._run: BuildRun | None = None
        self._task: asyncio.Task[Any] | None = None
        if self.store.get_session(self.build_id).status is SessionStatus.RUNNING:
            # Re-created after a crash (or revived by Control): carry on where the store says.
            self._task = asyncio.get_running_loop().create_task(self._drive())

    def _ports(self) -> BuildRun:
        cfg = self.config
        where = cfg.where()
        if self._pool is None and cfg.pool_size:
            self._pool = ProxyPool(where.slot, size=cfg.pool_size)
        fleet = RayFleet(self.build_id, where, self._pool, warm_pools=cfg.warm_pools)
        gate = RayGate(cfg, fleet)
        events: EventsPort = BusEvents(self.bus, self.build_id)
        notifier = None
        if cfg.webhook:  # ghost mode: the run's end or pause, and the events the user asked for
            webhook = WebhookNotifier(validated_arg(WebhookConfig, cfg.webhook, "webhook"))
            notifier = SessionNotifier(webhook, self.store, self.build_id)
            events = NotifyingEvents(events, webhook, self.store, self.build_id)
        session = self.store.get_session(self.build_id)
        budget = Budget.model_validate(session.budget) if session.budget else None
        ledger = BudgetLedger(self.store, self.build_id, budget, events=events)
        from sandbox_agents.llm.factory import make_provider
        from sandbox_agents.llm.metered import MeteredProvider
        from sandbox_agents.verifiers import Chromium

        no_cassettes = cfg.llm.get("type") == "replay" and not cfg.llm.get("cassettes")
        provider = None if no_cassettes else make_provider(validated_arg(LLMConfig, cfg.llm, "llm"))
        swarms = RaySwarms(cfg, fleet)
        teams = RayTeams(cfg, fleet, swarms)
        run: BuildRun | None = None

        def contract() -> IntentContract:
            assert run is not None and run.locked is not None
            return run.locked.contract

        ports = BuildPorts(
            fleet=fleet,
            teams=teams,
            verify=SwarmVerify(contract, fleet.sandbox, swarms.run),
            judge=self._judge,
            gate=gate,
            merges=BusMergeRequests(self.bus, self.build_id),
            progress=BusProgress(self.bus, self.build_id),
            interfaces=BusInterfaces(self.bus, self.build_id, handles.agent_component),
            preview=gate,
            satisfaction=SandboxSatisfaction(gate.main_sandbox, gate.main_urls, fleet.sandbox, ui_checker(Chromium())),
            events=events,
            store=self.store,
            ledger=ledger,
            clock=SystemClock(),
            planner=ProviderPlanner(MeteredProvider(provider, ledger.record_llm)) if provider is not None else None,
            notifier=notifier,
        )
        settings = BuildSettings(
            checkpoint_interval_s=cfg.checkpoint_interval_s,
            max_merge_attempts=cfg.max_merge_attempts,
            backend=str(where.slot.get("type", "local")),
            component_backends={name: str(config.get("type")) for name, config in where.components.items()},
            parallel=cfg.parallel,
        )
        run = BuildRun(self.build_id, ports, settings)
        return run

    async def _drive(self) -> None:
        self._run = self._ports()
        try:  # pooled teams are detached: a previous incarnation's must go
            await stop_build_teams(self.build_id)
        except Exception as exc:  # noqa: BLE001 - the run goes on; a stray team is logged, not fatal
            logger.warning("build %s: stopping the teams of a previous incarnation failed: %r", self.build_id, exc)
        self._start_early()
        if self._pool is not None:
            try:
                await self._pool.fill()
            except Exception as exc:  # noqa: BLE001 - the build starts its proxies cold instead
                logger.warning("build %s: filling the proxy pool failed: %r", self.build_id, exc)
        try:
            await self._run.run()
        finally:
            if self._pool is not None:
                try:
                    await self._pool.close()
                except Exception as exc:  # noqa: BLE001 - its warm proxies end with their TTL
                    logger.warning("build %s: closing the proxy pool failed: %r", self.build_id, exc)
                self._pool = None
            try:
                await self.bus.flush(timeout=5.0)
            except Exception as exc:  # noqa: BLE001 - the events not flushed are lost; the store has the outcome
                logger.warning("build %s: flushing the bus failed: %r", self.build_id, exc)
            try:  # the per-node hubs are detached: they go when the run that needed them ends
                await stop_build_hubs(self.build_id)
            except Exception as exc:  # noqa: BLE001 - a stray hub only reads; the next run's start stops it
                logger.warning("build %s: stopping its hubs failed: %r", self.build_id, exc)

    def _start_early(self) -> None:
        """Start the actors the run will need later now, so their processes start while the fleet does.

        The node's context hub (the teams' agents read it before their first turn) and, when the
        contract holds a tournament, the judge. Creating an actor returns at once.
        """
        cfg = self.config
        try:
            start_hub(self.build_id, cfg.redis_url, cfg.bus_prefix)
            contract = self.store.get_session(self.build_id).contract
            if contract is not None and any(
                (c.get("tournament") or {}).get("candidates", 1) > 1 for c in contract.get("components", [])
            ):
                self._judge.handle()
        except (RayError, ValueError) as exc:  # they start on first use instead
            logger.warning("build %s: starting the hub or the judge early failed: %r", self.build_id, exc)

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- the actor's methods --------------------------------------------------------------------

    async def start(self) -> str:
        """Run the build in the background (no-op while it runs); returns its status."""
        session = self.store.get_session(self.build_id)
        if not self._running() and session.status in (SessionStatus.QUEUED, SessionStatus.RUNNING):
            if session.status is SessionStatus.QUEUED:
                self.store.update_session(self.build_id, status=SessionStatus.RUNNING)
            self._task = asyncio.get_running_loop().create_task(self._drive())
        return self.store.get_session(self.build_id).status.value

    async def status(self) -> dict[str, Any]:
        if self._run is not None:
            data = self._run.describe()
        else:
            session = self.store.get_session(self.build_id)
            data = {"build_id": self.build_id, "status": session.status.value, "phase": session.phase}
        data["running"] = self._running()
        return data

    async def cancel(self) -> str:
        """Cancel at the next step boundary (immediately when nothing runs)."""
        if self._run is not None and self._running():
            self._run.request_cancel()
        else:
            self._run = self._ports()
            self._run.request_cancel()
            self._task = asyncio.get_running_loop().create_task(self._drive())
        return "cancelling"

    async def resume(self) -> str:
        """Continue a paused build from its checkpoints (after ``raise_budget``)."""
        if not self._running():
            self._task = asyncio.get_running_loop().create_task(self._drive())
        return self.store.get_session(self.build_id).status.value

    async def raise_budget(self, usd: float) -> dict[str, Any]:
        """Set the build's limit to ``usd`` dollars; a paused build resumes."""
        session = self.store.get_session(self.build_id)
        budget = Budget.model_validate(session.budget) if session.budget else Budget()
        ledger = BudgetLedger(self.store, self.build_id, budget, events=BusEvents(self.bus, self.build_id))
        status = await ledger.raise_budget(usd)
        if self._run is not None:
            self._run.ports.ledger.budget = ledger.budget
        if self.store.get_session(self.build_id).status is SessionStatus.PAUSED:
            await self.resume()
        return {"limit_usd": usd, "spent_usd": ledger.spent(), "status": status.value}

    async def preview(self) -> dict[str, Any]:
        preview = handles.find(preview_name(self.build_id))
        if preview is not None:
            try:
                urls = await preview.urls.remote()
                return {"url": await preview.expose.remote(), "components": urls}
            except (InvalidInputError, RayError) as exc:  # not started, nothing to serve, or restarting
                logger.info("build %s: no preview yet: %s", self.build_id, exc)
        return {"url": None, "components": {}}

    async def screenshots(self) -> list[dict[str, Any]]:
        """The preview's kept screenshots, newest first; none before it exists (or while it restarts)."""
        preview = handles.find(preview_name(self.build_id))
        if preview is not None:
            try:
                return list(await preview.screenshots.remote())
            except RayError as exc:  # restarting: the next poll finds them again
                logger.info("build %s: no screenshots yet: %s", self.build_id, exc)
        return []

    async def screenshot(self, name: str) -> bytes:
        """The PNG of the preview's screenshot ``name`` (bytes travel back; the files stay on its host).

        Raises:
            InvalidInputError: ``name`` is not a screenshot's name.
            ScreenshotNotFoundError: The preview does not exist or keeps no screenshot of that name.
        """
        check_name(name)
        preview = handles.find(preview_name(self.build_id))
        if preview is None:
            raise ScreenshotNotFoundError(f"build {self.build_id} has no preview", name=name)
        return bytes(await preview.screenshot_png.remote(name))

    async def sandboxes(self) -> list[dict[str, Any]]:
        where = self.config.where()
        return [
            {
                "id": s.sandbox_id,
                "slot": s.slot,
                "component": s.component,
                "backend": str(where.backend("slot", s.component).get("type", "local")),
                "status": s.status,
            }
            for s in self.store.list_slots(self.build_id)
            if s.sandbox_id
        ]

    async def take_control(self) -> str:
        return str(await handles.get(preview_name(self.build_id)).take_control.remote())

    async def heartbeat(self) -> float:
        return SystemClock().now()

    async def pid(self) -> int:
        return os.getpid()

    async def wait(self, timeout: float | None = None) -> str:
        """Wait for the background run to end (tests); returns the build's status."""
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.store.get_session(self.build_id).status.value

    async def close(self) -> None:
        """Close the gate and preview of a finished build (their sandboxes go)."""
        await close_build_actors(self.build_id)


BuildCoordinator = handles.actor_class(BuildCoordinatorActor, restartable=True, max_concurrency=64)


async def close_build_actors(build_id: str, *, timeout_s: float | None = None) -> None:
    """Close the build's gate, preview and judge, those that run (their sandboxes go), and kill them.

    ``timeout_s`` bounds each close (:func:`actors.handles.stop`); None waits as long as it takes.
    """
    for name in (gate_name(build_id), preview_name(build_id), judge_name(build_id)):
        handle = handles.find(name)
        if handle is not None:
            await handles.stop(handle, handle.close.remote, name=name, timeout_s=timeout_s)


def start_coordinator(config: CoordinatorConfig) -> Any:
    """Get the build's coordinator, or start it (detached, restartable, named ``build:{id}``)."""
    save_config(config)
    name = coordinator_name(config.build_id)
    running = handles.find(name)
    if running is not None:
        return running
    return handles.start(BuildCoordinator, name, config.model_dump(mode="json"), get_if_exists=True)


def get_coordinator(build_id: str) -> Any:
    """The build's coordinator handle; ValueError when it does not exist."""
    return handles.get(coordinator_name(build_id))


async def stop_coordinator(handle: Any) -> None:
    """Close the build's gate and preview and kill the coordinator for good."""
    await handles.stop(handle, handle.close.remote)
