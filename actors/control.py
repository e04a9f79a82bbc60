"""Control: the one actor ``control`` per cluster — registry, quotas, priority queue, revival, heartbeats.

Every build lives in the store; Control is how the front doors (HTTP, CLI) reach them, always
scoped to a user (another user's build is a :class:`BuildNotFoundError`, like a missing one).

* **Quotas.** A user's running builds together hold at most ``MODAL_MAX_CONCURRENT``
  sandboxes (a build needs one per slot of its plan); the cluster at most ``max_sandboxes``.
  A build that does not fit waits in a priority queue (higher ``priority`` first, then
  oldest) and is admitted when running builds end or pause.
* **Revival.** At start it re-queues queued builds and gets-or-starts the coordinator of every
  running or paused one; a coordinator resumes a running build by itself.
* **Heartbeats.** Every ``heartbeat_s`` (60 s) it pings each running build's coordinator; one
  that does not answer in ``heartbeat_timeout_s`` is restarted (``ray.kill`` with restart, or
  started again when its actor is gone). One that died is left to Ray, which is re-creating it.
* **Cancel while down.** A cancel is stored first (the session's ``error`` marker), so a
  coordinator that was down honours it when it comes back.
* **Warm pools.** It owns the fleet's warm pools (:class:`~actors.pools.fleet.FleetPools`:
  proxies with standby sandboxes, teams, agents, swarms), fills them in the background at start
  and hands them to every build's coordinator (``take_warm``); they refill as they are taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors import handles
from actors.actor_args import validated_arg
from actors.build.actor import start_coordinator
from actors.build.config import CoordinatorConfig, config_path, load_config, save_config
from actors.handles import CONTROL_NAME, RayActorError, coordinator_name
from actors.pools.fleet import FleetPoolConfig, FleetPools
from actors.pools.warm import Warm
from coordinator.api_models import FINAL_STATUSES, BuildRequest, BuildStatus, BuildSummary
from coordinator.budget import budget_status
from coordinator.build.ports import CANCEL_REQUESTED
from coordinator.clock import SystemClock
from coordinator.contracts import load_contract, parse_contract
from coordinator.plan import plan_fleet
from coordinator.resources import examples_dir
from coordinator.store.schema import BuildSession, SessionStatus
from coordinator.store.store import Store
from sandbox_agents.errors import BuildNotFoundError, InvalidInputError, LLMConfigError
from sandbox_agents.settings import get_settings

logger = logging.getLogger(__name__)

EXAMPLES = examples_dir()


class ControlConfig(BaseModel):
    """What the Control actor needs (and hands every coordinator it starts)."""

    model_config = ConfigDict(extra="forbid")

    redis_url: str
    bus_prefix: str = "kriptik"
    backend: dict[str, Any] = Field(default_factory=lambda: {"type": "local"})
    llm: dict[str, Any] | None = None
    """Provider config for prompt/contract builds; None: replay of ``KRIPTIK_CASSETTES``."""
    max_sandboxes_per_user: int = Field(default_factory=lambda: get_settings().modal_max_concurrent, ge=1)
    """``MODAL_MAX_CONCURRENT``: sandboxes one user's running builds may hold together."""
    max_sandboxes: int = Field(default=64, ge=1)
    """Sandboxes the whole fleet may hold; past it builds queue by priority."""
    heartbeat_s: float = Field(default=60.0, gt=0)
    heartbeat_timeout_s: float = Field(default=10.0, gt=0)
    admit_poll_s: float = Field(default=1.0, gt=0)
    """How often finished builds free their quota and queued ones are admitted."""
    examples_dir: str = str(EXAMPLES)
    coordinator: dict[str, Any] = Field(default_factory=dict)
    """Extra CoordinatorConfig fields for every build (pool_size, checkpoint_interval_s, gate, webhook…)."""
    store_path: str | None = None
    pools: FleetPoolConfig = Field(default_factory=FleetPoolConfig)
    """Warm actors kept for every build (proxies with standby sandboxes, teams, agents, swarms)."""


class _Admission(BaseModel):
    model_config = ConfigDict(extra="forbid")

    build_id: str
    user_id: str
    priority: int = 0
    needed: int = 1


class ControlActor:
    """The cluster's build registry. Start through :func:`start_control`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = validated_arg(ControlConfig, config, "config")
        self.store = Store(self.config.store_path).start()
        self.clock = SystemClock()
        self._seq = itertools.count()
        self._queue: list[tuple[int, int, str]] = []  # (-priority, seq, build id)
        self._admissions: dict[str, _Admission] = {}
        self._running: dict[str, _Admission] = {}
        self._restarts: dict[str, int] = {}
        self._pools = FleetPools(self.config.backend, self.config.pools, persist=True)
        loop = asyncio.get_running_loop()
        self._revived = loop.create_task(self._revive())
        self._loops = [
            loop.create_task(self._admit_loop()),
            loop.create_task(self._heartbeat_loop()),
            loop.create_task(self._fill_pools()),
        ]

    # --- the Control interface ------------------------------------------------------------------

    async def submit(self, user_id: str, request: dict[str, Any]) -> str:
        """Register a build and queue it; returns its id."""
        await self._revived
        req = request if isinstance(request, BuildRequest) else BuildRequest.model_validate(request)
        llm = self.config.llm or _llm_from_settings()
        contract = None
        if req.contract is not None:
            contract = parse_contract(req.contract)
        elif req.example is not None:
            path = Path(self.config.examples_dir) / "intents" / f"{req.example}.yaml"
            if not path.is_file():
                raise InvalidInputError(f"no example {req.example!r}", field="example")
            contract = load_contract(path)
            cassette = Path(self.config.examples_dir) / "cassettes" / f"{req.example}.yaml"
            if cassette.is_file():
                llm = {"type": "replay", "cassettes": [str(cassette)]}
        if llm is None:  # refuse now, with the fix, rather than fail deep inside the build's agents
            raise InvalidInputError(
                "no LLM is configured for this build: KRIPTIK_LLM=replay needs KRIPTIK_CASSETTES (or submit one of "
                "the examples, which bring their cassettes), or set KRIPTIK_LLM=anthropic|openai with its API key",
                field="llm",
            )
        prompt = req.prompt or (contract.summary if contract else "")
        budget = {"max_usd": req.budget_usd} if req.budget_usd else None
        session = self.store.create_session(user_id, prompt, budget=budget)
        if contract is not None:
            self.store.update_session(session.id, contract=contract.model_dump(mode="json"))
        needed = len(plan_fleet(contract).slots) if contract is not None else 1
        cfg = CoordinatorConfig(
            build_id=session.id,
            redis_url=self.config.redis_url,
            bus_prefix=self.config.bus_prefix,
            backend=self.config.backend,
            llm=llm,
            store_path=self.config.store_path,
            **self.config.coordinator,
        )
        save_config(cfg)
        admission = _Admission(build_id=session.id, user_id=user_id, priority=req.priority, needed=needed)
        _admission_path(session.id).write_text(admission.model_dump_json())
        self._enqueue(admission)
        await self._admit()
        return session.id

    async def status(self, user_id: str, build_id: str) -> dict[str, Any]:
        """From the store alone: the coordinator persists everything the view shows (no actor hop)."""
        return _status_view(self.store, self.store.get_session(build_id, user_id))

    async def list_builds(self, user_id: str) -> list[dict[str, Any]]:
        return [
            BuildSummary(
                id=s.id,
                status=s.status.value,
                phase=s.phase,
                title=(s.contract or {}).get("name") or s.prompt.split("\n", 1)[0][:120],
                started_at=s.started_at,
                finished_at=s.finished_at,
            ).model_dump()
            for s in self.store.list_sessions(user_id)
        ]

    async def cancel(self, user_id: str, build_id: str) -> dict[str, Any]:
        session = self.store.get_session(build_id, user_id)
        if session.status.value in FINAL_STATUSES:
            return {"id": build_id, "status": session.status.value}
        if build_id in self._admissions and build_id not in self._running:  # still queued: nothing runs
            self._admissions.pop(build_id)
            self.store.update_session(
                build_id, status=SessionStatus.CANCELLED, finished_at=self.clock.now(), error="cancelled by the user"
            )
            return {"id": build_id, "status": "cancelled"}
        self.store.update_session(build_id, error=CANCEL_REQUESTED)  # durable: honoured after a restart too
        try:
            await self._call(build_id, "cancel")
        except Exception:  # noqa: BLE001 - the coordinator is down: the stored flag is enough
            logger.warning("control: coordinator of %s unreachable; cancel stored", build_id)
        return {"id": build_id, "status": "cancelling"}

    async def resume(self, user_id: str, build_id: str) -> dict[str, Any]:
        session = self.store.get_session(build_id, user_id)
        if session.status.value in FINAL_STATUSES:
            raise InvalidInputError(f"build {build_id} is {session.status.value}; it cannot resume", field="build_id")
        status = await self._call(build_id, "resume", start=True)
        self._running.setdefault(build_id, self._admission_of(session))
        return {"id": build_id, "status": status}

    async def raise_budget(self, user_id: str, build_id: str, usd: float) -> dict[str, Any]:
        """Add ``usd`` dollars to the build's limit; a paused build resumes."""
        session = self.store.get_session(build_id, user_id)
        if usd <= 0:
            raise InvalidInputError("a budget raise must be positive", field="usd")
        current = (session.budget or {}).get("max_usd") or 0.0
        result = await self._call(build_id, "raise_budget", current + usd, start=True)
        self._running.setdefault(build_id, self._admission_of(session))
        return result

    async def preview(self, user_id: str, build_id: str) -> dict[str, Any]:
        self.store.get_session(build_id, user_id)
        return await self._call(build_id, "preview", start=True)

    async def sandboxes(self, user_id: str, build_id: str) -> list[dict[str, Any]]:
        self.store.get_session(build_id, user_id)
        return await self._call(build_id, "sandboxes", start=True)

    async def take_control(self, user_id: str, build_id: str) -> dict[str, Any]:
        self.store.get_session(build_id, user_id)
        return {"url": await self._call(build_id, "take_control", start=True)}

    # --- warm pools -------------------------------------------------------------------------------

    async def take_warm(self, kind: str, count: int = 1, backend: dict[str, Any] | None = None) -> list[Warm]:
        """Up to ``count`` warm, unbound ``kind`` actors (proxy, team, agent, swarm) for a build to bind.

        The caller owns them from then on (binds them, and kills them when done); the pool refills
        in the background. Fewer (or none) when the pool is short: the caller starts the rest cold.
        """
        return await self._pools.take(kind, count, backend)

    async def warm_pools(self) -> dict[str, int]:
        """Warm actors per kind right now."""
        return self._pools.warm()

    async def fill_pools(self) -> dict[str, int]:
        """Fill every pool now and wait for it (tests, benchmarks); returns the warm counts."""
        await self._pools.fill()
        return self._pools.warm()

    async def close_pools(self) -> None:
        """Stop the warm actors never handed out (before Control is stopped for good)."""
        await self._pools.close()

    async def _fill_pools(self) -> None:
        try:
            await self._pools.fill()
        except Exception:  # noqa: BLE001 - builds start cold actors meanwhile; takes refill again
            logger.exception("control: filling the warm pools failed")

    # --- operations -----------------------------------------------------------------------------

    async def restarts(self) -> dict[str, int]:
        """Coordinators the heartbeat restarted, per build."""
        return dict(self._restarts)

    async def queued(self) -> list[str]:
        return [b for _, _, b in sorted(self._queue) if b in self._admissions and b not in self._running]

    async def check_heartbeats(self) -> list[str]:
        """One heartbeat round now; returns the builds whose coordinator was restarted."""
        restarted = []
        for build_id in list(self._running):
            if self.store.get_session(build_id).status is not SessionStatus.RUNNING:
                continue
            try:
                handle = handles.get(coordinator_name(build_id))
                await asyncio.wait_for(handle.heartbeat.remote(), self.config.heartbeat_timeout_s)
                if not (await asyncio.wait_for(handle.status.remote(), self.config.heartbeat_timeout_s))["running"]:
                    await handle.start.remote()  # alive but idle while the store says running
                continue
            except ValueError:  # the actor is gone: start it again
                await self._coordinator(build_id).start.remote()
            except RayActorError:
                # It died (or is being re-created) and Ray brings it back by itself (max_restarts=-1):
                # killing it now would only throw away the incarnation that is starting.
                logger.info("control: the coordinator of %s is restarting", build_id)
                continue
            except TimeoutError:  # alive but wedged: restart it (Ray re-creates it)
                handles.restart(handle)
            except Exception:  # noqa: BLE001 - a failed heartbeat is retried at the next round
                logger.exception("control: heartbeat of %s failed", build_id)
                continue
            self._restarts[build_id] = self._restarts.get(build_id, 0) + 1
            restarted.append(build_id)
            logger.warning("control: restarted the coordinator of %s", build_id)
        return restarted

    # --- internals ------------------------------------------------------------------------------

    def _coordinator(self, build_id: str) -> Any:
        config = load_config(build_id)
        if config is None:
            raise BuildNotFoundError(f"build {build_id} has no coordinator config at {config_path(build_id)}")
        return start_coordinator(config)

    async def _call(self, build_id: str, method: str, *args: Any, start: bool = False) -> Any:
        try:
            handle = handles.get(coordinator_name(build_id))
        except ValueError:
            if not start:
                raise  # e.g. a cancel while the coordinator is down: the stored flag waits for it
            handle = self._coordinator(build_id)
        return await getattr(handle, method).remote(*args)

    def _admission_of(self, session: BuildSession) -> _Admission:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return _Admission.model_validate_json(_admission_path(session.id).read_text())
        return _Admission(build_id=session.id, user_id=session.user_id)

    def _enqueue(self, admission: _Admission) -> None:
        self._admissions[admission.build_id] = admission
        heapq.heappush(self._queue, (-admission.priority, next(self._seq), admission.build_id))

    def _in_use(self, user_id: str | None = None) -> int:
        return sum(a.needed for a in self._running.values() if user_id is None or a.user_id == user_id)

    async def _admit(self) -> list[str]:
        """Free the quota of builds that ended or paused; start queued builds that now fit."""
        for build_id in list(self._running):
            status = self.store.get_session(build_id).status
            if status is not SessionStatus.RUNNING:
                self._running.pop(build_id)
                if status.value in FINAL_STATUSES:
                    self._admissions.pop(build_id, None)
                    _admission_path(build_id).unlink(missing_ok=True)
        admitted, waiting = [], []
        while self._queue:
            item = heapq.heappop(self._queue)
            admission = self._admissions.get(item[2])
            if admission is None or item[2] in self._running:
                continue
            user_quota = self.config.max_sandboxes_per_user
            needed = min(admission.needed, user_quota)  # a build bigger than the quota runs alone
            fits_user = self._in_use(admission.user_id) + needed <= user_quota
            fits_fleet = self._in_use() + needed <= self.config.max_sandboxes or not self._running
            if not (fits_user and fits_fleet):
                waiting.append(item)
                continue
            self._running[admission.build_id] = admission
            self.store.update_session(admission.build_id, status=SessionStatus.RUNNING)
            await self._coordinator(admission.build_id).start.remote()
            admitted.append(admission.build_id)
        for item in waiting:
            heapq.heappush(self._queue, item)
        return admitted

    async def _revive(self) -> None:
        for session in self.store.active_sessions():
            admission = self._admission_of(session)
            if session.status is SessionStatus.QUEUED:
                self._enqueue(admission)
                continue
            try:
                handle = self._coordinator(session.id)
                if session.status is SessionStatus.RUNNING:
                    self._running[session.id] = admission
                    await handle.start.remote()
            except Exception:  # noqa: BLE001 - one build that cannot be revived must not stop the others
                logger.exception("control: could not revive build %s", session.id)

    async def _admit_loop(self) -> None:
        await self._revived
        while True:
            try:
                await self._admit()
            except Exception:  # noqa: BLE001 - keep admitting
                logger.exception("control: admission round failed")
            await self.clock.sleep(self.config.admit_poll_s)

    async def _heartbeat_loop(self) -> None:
        await self._revived
        while True:
            await self.clock.sleep(self.config.heartbeat_s)
            try:
                await self.check_heartbeats()
            except Exception:  # noqa: BLE001 - keep watching
                logger.exception("control: heartbeat round failed")


def _admission_path(build_id: str) -> Path:
    return config_path(build_id).with_suffix(".admission.json")


def _llm_from_settings() -> dict[str, Any] | None:
    """The LLM that ``KRIPTIK_LLM`` (and its keys or ``KRIPTIK_CASSETTES``) names, or None if unusable."""
    from sandbox_agents.llm.config import llm_config

    try:
        return llm_config(get_settings().kriptik_llm).model_dump(mode="json")
    except LLMConfigError:
        return None


def _status_view(store: Store, session: BuildSession) -> dict[str, Any]:
    """The stored session as a :class:`BuildStatus` (the coordinator persists every field shown)."""
    budget = session.budget or {}
    totals = store.cost_totals(session.id)
    spent = totals.estimated_cost
    merges = [
        {"component": m.component, "status": m.status, "slot": m.ref.get("slot"), "at": m.created_at}
        for m in store.pending_merges(session.id)
    ]
    view = BuildStatus(
        id=session.id,
        user_id=session.user_id,
        status=session.status.value,
        phase=session.phase,
        components=[
            {
                "slot": s.slot,
                "component": s.component,
                "candidate": s.candidate,
                "sandbox_id": s.sandbox_id,
                "status": s.status,
            }
            for s in store.list_slots(session.id)
        ],
        preview_url=session.preview_url,
        budget={
            "limit_usd": budget.get("max_usd") or 0.0,
            "spent_usd": round(spent, 6),
            "llm_tokens": totals.llm_tokens,
            "compute_seconds": round(totals.compute_seconds, 3),
            "status": budget_status(budget, spent).value,
        },
        merges=merges,
        started_at=session.started_at,
        finished_at=session.finished_at,
        error=session.error,
    )
    return json.loads(view.model_dump_json())


Control = handles.actor_class(ControlActor, restartable=True, max_concurrency=256)


def start_control(config: ControlConfig | dict[str, Any]) -> Any:
    """Get or start the detached, restartable ``control`` actor in namespace ``kriptik``."""
    config = validated_arg(ControlConfig, config, "config")
    return handles.start(Control, CONTROL_NAME, config.model_dump(mode="json"), get_if_exists=True)


async def stop_control(handle: Any) -> None:
    """Stop the warm actors of Control's pools and kill Control for good."""
    await handles.stop(handle, handle.close_pools.remote, name=CONTROL_NAME, timeout_s=30)
