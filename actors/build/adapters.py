"""The Ray-side adapters of a build's ports: fleet (SandboxProxy), teams, gate and preview, swarms, judge.

:mod:`coordinator.build.ports` declares what :class:`coordinator.build.run.BuildRun` needs (the
ports, floor 2); this module implements the ones that reach other actors, over Ray handles
(floor 3). Its sibling on floor 2, :mod:`coordinator.build.adapters`, holds the adapters that need
no Ray (events on the bus, the planner, the satisfaction check, the notifier). Each adapter
here finds its actors again by their build names after a coordinator restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray.exceptions import RayTaskError

from actors import handles
from actors.build.config import DETERMINISTIC_ENV, CoordinatorConfig
from actors.handles import (
    MAIN_TEST_SID,
    RayActorError,
    RayError,
    agent_name,
    gate_name,
    judge_name,
    preview_name,
    proxy_name,
    swarm_name,
    team_name,
)
from actors.judge import JudgeConfig, start_judge
from actors.merge_gate import GateConfig, start_gate
from actors.pools.proxies import ProxyPool, acquire_proxy, get_proxy, release
from actors.pools.warm import ControlWarmSource, WarmSource, forget_alias
from actors.preview import PreviewConfig, start_preview
from actors.sandbox_proxy import forget_binding, start_proxy
from actors.swarm import SwarmConfig, get_swarm, launch_swarm, stop_swarm, target_json
from actors.team import TeamConfig, get_team, launch_team, stop_team
from coordinator.build.adapters import served
from coordinator.build.ports import FixReason, MergeOutcome, TeamOutcome
from coordinator.contracts import IntentContract
from coordinator.judge import Decision, Evidence
from coordinator.merge import is_junk
from coordinator.merge.gate import failure_reason
from coordinator.merge.models import MergeRequest
from coordinator.merge.sandbox import request_from_sandbox
from coordinator.placement import Placement, spec_for_backend
from coordinator.plan import SlotPlan
from coordinator.team import ComponentWork, TeamTask
from sandbox_agents.backends.base import SandboxSpec, SandboxStatus, SnapshotRef
from sandbox_agents.errors import SandboxError
from sandbox_agents.proxy_sandbox import ProxySandbox
from sandbox_agents.verifiers.models import finding_lines

logger = logging.getLogger(__name__)


class RayFleet:
    """One SandboxProxy per slot, named (or aliased) ``build:{id}:sbx:{slot}``."""

    def __init__(
        self, build_id: str, placement: Placement, pool: ProxyPool | None, *, warm_pools: bool = False
    ) -> None:
        self.build_id = build_id
        self.placement = placement
        self.pool = pool
        """The coordinator's own proxy pool (of the placement's slot backend)."""
        self.warm: WarmSource | None = ControlWarmSource(placement.slot) if warm_pools else None
        """Where warm actors come from (the Control actor's pools); the teams and swarms take from it too."""
        self.handles: dict[str, Any] = {}
        self.specs: dict[str, SandboxSpec] = {}

    def spec_of(self, slot: SlotPlan) -> SandboxSpec:
        spec = slot.spec.model_copy(update={"env": {**slot.spec.env, **DETERMINISTIC_ENV}})
        spec = spec_for_backend(spec, self.backend_of(slot.slot_id), installs=bool(slot.packages))
        self.specs[slot.slot_id] = spec
        return spec

    def handle(self, slot_id: str) -> Any:
        if slot_id not in self.handles:
            self.handles[slot_id] = get_proxy(self.build_id, slot_id)  # ValueError when there is none
        return self.handles[slot_id]

    async def sandbox(self, slot_id: str) -> ProxySandbox:
        return await ProxySandbox.connect(self.handle(slot_id), self.specs.get(slot_id))

    async def acquire(self, slot: SlotPlan) -> str:
        spec = self.spec_of(slot)
        leftover = await self._leftover(slot.slot_id)
        if leftover is not None:
            await self._recreate(leftover, spec, slot.component)
            handle = leftover
        elif self.pool is not None and self.backend_of(slot.slot_id) == self.placement.slot:
            handle = await self.pool.acquire(self.build_id, slot.slot_id, spec, component=slot.component)
        else:
            slot_id, component, backend = slot.slot_id, slot.component, self.backend_of(slot.slot_id)
            handle = await acquire_proxy(
                self._warm_for(backend), backend, self.build_id, slot_id, spec, component=component
            )
        self.handles[slot.slot_id] = handle
        await handle.set_active.remote(True)
        return await handle.sandbox_id.remote()

    def backend_of(self, slot_id: str) -> dict[str, Any]:
        """The backend of a slot's sandbox (its component's, by the placement)."""
        return self.placement.backend("slot", slot_id.split("~", 1)[0])

    def _warm_for(self, backend: dict[str, Any]) -> WarmSource | None:
        """Warm proxies of ``backend`` (Control hands none of another backend's)."""
        if self.warm is None or backend == self.placement.slot:
            return self.warm
        return ControlWarmSource(backend)

    async def _leftover(self, slot_id: str) -> Any:
        """A live proxy of the slot that a previous incarnation started but never recorded, or None.

        A coordinator killed between starting the slot's proxy and storing its sandbox id leaves
        the named proxy behind; starting it again would fail with ``ActorAlreadyExistsError``.
        A proxy just released (killed for good) is waited out until its name is free.
        """
        self.handles.pop(slot_id, None)
        for _ in range(100):
            try:
                handle = get_proxy(self.build_id, slot_id)
            except ValueError:
                return None
            if await handles.answers(handle, timeout_s=10):
                return handle
            await asyncio.sleep(0.1)  # dying: its name is freed once Ray has it dead
        logger.warning("build %s: the proxy of %s neither answers nor dies", self.build_id, slot_id)
        return None

    async def _recreate(self, handle: Any, spec: SandboxSpec, component: str) -> None:
        """Give a leftover proxy a clean sandbox (its own may be half-made, or still being created)."""
        for attempt in range(3):
            try:
                await handle.terminate.remote()
            except (SandboxError, RayError) as exc:  # half-made or gone: create decides below
                logger.info("build %s: terminating a leftover sandbox failed: %s", self.build_id, exc)
            try:
                await handle.create.remote(spec, self.build_id, component)
                return
            except SandboxError:  # the dead incarnation's create landed meanwhile: end it too
                if attempt == 2:
                    raise

    async def alive(self, slot_id: str) -> bool:
        try:
            return await self.handle(slot_id).status.remote() == SandboxStatus.RUNNING
        except (ValueError, SandboxError, RayError) as exc:  # no proxy, or its sandbox is gone: not alive
            logger.info("build %s: the sandbox of %s is not alive: %s", self.build_id, slot_id, exc)
            self.handles.pop(slot_id, None)
            return False

    async def restore(self, slot: SlotPlan, ref: SnapshotRef) -> str:
        self.spec_of(slot)
        try:
            handle = self.handle(slot.slot_id)
            await handle.ping.remote()
        except (ValueError, RayError):  # released (paused) or lost: a cold proxy under the build's name
            name = proxy_name(self.build_id, slot.slot_id)
            forget_binding(name)
            forget_alias("proxy", name)
            handle = start_proxy(name, self.backend_of(slot.slot_id))
            self.handles[slot.slot_id] = handle
        sandbox_id = await handle.restore.remote(ref)
        await handle.set_active.remote(True)
        return sandbox_id

    async def snapshot(self, slot_id: str) -> SnapshotRef:
        return await self.handle(slot_id).snapshot.remote()

    async def tree(self, slot_id: str) -> dict[str, bytes]:
        handle = self.handle(slot_id)
        sandbox = ProxySandbox(handle, await handle.sandbox_id.remote())
        component = slot_id.split("~", 1)[0]
        request = await request_from_sandbox(sandbox, build_id=self.build_id, component=component, slot=slot_id)
        paths = sorted(request.files)  # what a merge of the slot would carry (no junk, no links)
        blobs = await asyncio.gather(*(sandbox.read_file(p) for p in paths))
        return dict(zip(paths, blobs, strict=True))

    async def seed(self, slot_id: str, files: dict[str, bytes]) -> None:
        handle = self.handle(slot_id)
        await asyncio.gather(*(handle.write_file.remote(p, data) for p, data in files.items()))

    async def size_bytes(self, slot_id: str) -> int:
        files = await self.handle(slot_id).list_files.remote("**/*")
        return sum(f.size for f in files if not f.is_dir and not is_junk(f.path))

    async def compute_seconds(self, slot_id: str) -> float:
        return (await self.handle(slot_id).metering.remote()).compute_seconds

    async def release(self, slot_id: str) -> None:
        try:
            handle = self.handle(slot_id)
        except ValueError:  # no proxy: nothing to release
            return
        self.handles.pop(slot_id, None)
        await release(handle, proxy_name(self.build_id, slot_id))

    async def merge_request(self, slot: SlotPlan, sandbox_id: str) -> MergeRequest:
        """A MergeRequest for the slot's workspace as it is now (junk left out, symlinks by target)."""
        sandbox = ProxySandbox(self.handle(slot.slot_id), sandbox_id)
        return await request_from_sandbox(
            sandbox,
            build_id=self.build_id,
            component=slot.component,
            slot=slot.slot_id,
            message=f"merge {slot.slot_id} (sandbox {sandbox_id})",
        )


TEAM_RESTARTS = 2
"""Fresh teams a slot run gets when its team or one of its agents dies (the agents themselves do not restart)."""
MAX_AGENTS = 8
"""Agent names a stopped team's slot is checked for (teams have 3-5 agents)."""


async def _agents_alive(team: Any, timeout_s: float = 10.0) -> bool:
    """True when every agent of ``team`` still answers (a dead one means its tasks were escalated)."""
    try:
        agents = await asyncio.wait_for(team.agents.remote(), timeout_s)
    except (RayError, TimeoutError):  # the team does not answer: dead for this run
        return False
    answered = await asyncio.gather(*(handles.answers(h, timeout_s) for _, h in agents))
    return all(answered)  # any agent that does not answer is dead for this run


FIX_TITLES: dict[FixReason, str] = {
    "merge": "Fix what the merge gate found in {component}",
    "interface": "Adapt {component} to the new interfaces of the components it uses",
}


class RayTeams:
    """A SandboxTeam actor per slot run (owned by the coordinator, so it dies with it)."""

    def __init__(self, config: CoordinatorConfig, fleet: RayFleet, swarms: RaySwarms | None = None) -> None:
        self.config = config
        self.fleet = fleet
        self.swarms = swarms
        self.running: dict[str, Any] = {}

    async def run(
        self, slot: SlotPlan, *, attempt: int = 0, feedback: str | None = None, reason: FixReason = "merge"
    ) -> TeamOutcome:
        await self.stop(slot.slot_id)
        work = slot.work()
        if self.config.parallel:  # its checks wait until its providers fed it their code
            work = work.model_copy(update={"providers": slot.depends_on})
        if feedback is not None:
            fix = TeamTask(
                id=f"{reason}-fix-{attempt}",
                title=FIX_TITLES[reason].format(component=slot.component),
                instructions=feedback,
                check_command=slot.check_command,
                agent=0,
            )
            work = work.model_copy(update={"tasks": (fix,)})  # the same team, manifests and check; one task
        for tries in range(TEAM_RESTARTS + 1):
            if tries:
                await self.stop(slot.slot_id)
            handle = None
            try:
                handle = await launch_team(
                    self.team_config(slot, work), self.fleet.handle(slot.slot_id), self.fleet.warm
                )
                self.running[slot.slot_id] = handle
                report = await handle.run.remote()
            except RayActorError:  # the team actor or one of its agents died under it (also while starting)
                if tries == TEAM_RESTARTS or (handle is not None and self.running.get(slot.slot_id) is not handle):
                    raise  # out of restarts, or stopped on purpose (cancel, pause)
                logger.warning("build %s: team of %s lost an actor; new team", self.config.build_id, slot.slot_id)
                continue
            if tries == TEAM_RESTARTS or self.running.get(slot.slot_id) is not handle or await _agents_alive(handle):
                return TeamOutcome(report=report, usage=[(c.role, c.model, c.usage) for c in report.usage])
            # An agent killed mid-task made its task escalate: the report is not what the team would have
            # done. Agents are not restartable (their turns are keyed), so run the whole team again.
            logger.warning("build %s: an agent of %s died during the run; running the team again",
                           self.config.build_id, slot.slot_id)  # fmt: skip
        raise AssertionError("unreachable")

    def team_config(self, slot: SlotPlan, work: ComponentWork) -> TeamConfig:
        """The slot's team: a tournament candidate's agents get its strategy's model and temperature.

        (The strategy's prompt suffix is already in ``work``: :meth:`SlotPlan.work` appends it.)
        """
        cfg = self.config
        strategy = slot.candidate
        return TeamConfig(
            build_id=cfg.build_id,
            sid=slot.slot_id,
            work=work,
            llm=cfg.llm,
            redis_url=cfg.redis_url,
            bus_prefix=cfg.bus_prefix,
            spec=self.fleet.specs.get(slot.slot_id, slot.spec),
            model=strategy.model if strategy else None,
            temperature=strategy.temperature if strategy else None,
        )

    async def stop(self, slot_id: str) -> None:
        """Stop the slot's team (and its swarm: the slot's agents and checkers go together)."""
        if self.swarms is not None:
            await self.swarms.stop(slot_id)
        handle = self.running.pop(slot_id, None)
        if handle is None:
            try:
                handle = get_team(self.config.build_id, slot_id)  # pooled (by its alias) or cold
            except ValueError:  # no team: nothing to stop
                return
        await stop_team(handle, team_name(self.config.build_id, slot_id))
        names = [team_name(self.config.build_id, slot_id)]
        names += [agent_name(self.config.build_id, slot_id, n) for n in range(MAX_AGENTS)]
        for name in names:  # a name is free only once its actor is gone (the next team reuses them)
            if not await handles.wait_gone(name):
                logger.warning("build %s: %s outlived its stop", self.config.build_id, name)


class RayGate:
    """The MergeGate ``build:{id}:gate`` (and the Preview, started with it)."""

    def __init__(self, config: CoordinatorConfig, fleet: RayFleet) -> None:
        self.config = config
        self.fleet = fleet
        self.contract: IntentContract | None = None
        self._gate: Any = None
        self._preview: Any = None

    def gate(self) -> Any:
        if self._gate is None:
            self._gate = handles.find(gate_name(self.config.build_id))
            if self._gate is None:
                cfg = GateConfig(
                    build_id=self.config.build_id,
                    backend=self.config.where().backend("main"),
                    redis_url=self.config.redis_url,
                    bus_prefix=self.config.bus_prefix,
                    **self.config.gate,
                )
                self._gate = start_gate(cfg)
        return self._gate

    def preview_actor(self) -> Any:
        if self._preview is None:
            self._preview = handles.find(preview_name(self.config.build_id))
            if self._preview is None:
                backend = self.config.where().backend("preview")
                self._preview = start_preview(PreviewConfig(build_id=self.config.build_id, backend=backend))
        return self._preview

    async def start(self, contract: IntentContract) -> str:
        self.contract = contract
        if served(contract):  # its process starts while the gate and the fleet do, not at the first merge
            self.preview_actor()
        return await self.gate().start.remote(contract.model_dump_json())

    async def admit(self, slot: SlotPlan, sandbox_id: str) -> MergeOutcome:
        request = await self.fleet.merge_request(slot, sandbox_id)
        try:
            result = await self.gate().admit.remote(request)
        except RayTaskError as exc:  # the gate failed on this candidate: a rejection the team can act on
            reason = f"the merge gate failed while checking it: {failure_reason(exc)}"
            return MergeOutcome(accepted=False, reason=reason, announced=False)
        findings = finding_lines(result.findings)
        return MergeOutcome(accepted=result.accepted, commit=result.commit, reason=result.reason, findings=findings)

    async def merged(self) -> list[str]:
        return await self.gate().merged.remote()

    async def tree(self) -> dict[str, bytes]:
        return await self.gate().tree.remote()

    async def tree_hash(self) -> str:
        return await self.gate().tree_hash.remote()

    # --- the preview port ----------------------------------------------------------------------

    async def refresh(self) -> str | None:
        if self.contract is None or not served(self.contract):
            return None  # nothing to serve (a library or CLI): no preview sandbox at all
        preview = self.preview_actor()
        await preview.start.remote(self.contract.model_dump_json())
        return await preview.refresh.remote()

    async def main_sandbox(self) -> ProxySandbox:
        return await ProxySandbox.connect(get_proxy(self.config.build_id, MAIN_TEST_SID))

    async def main_urls(self) -> dict[str, str]:
        if self.contract is None:
            return {}
        handle = get_proxy(self.config.build_id, MAIN_TEST_SID)
        return {c.name: await handle.expose.remote(c.dev_server.port) for c in served(self.contract)}  # type: ignore[union-attr]


class RaySwarms:
    """A Swarm actor per slot (``build:{id}:swarm:{sid}``) over the slot's current proxy."""

    def __init__(self, config: CoordinatorConfig, fleet: RayFleet) -> None:
        self.config = config
        self.fleet = fleet
        self.swarms: dict[str, tuple[Any, Any]] = {}  # slot -> (proxy handle, swarm handle)

    async def run(self, slot_id: str, target: Any) -> Any:
        proxy = self.fleet.handle(slot_id)
        known = self.swarms.get(slot_id)
        if known is None or known[0] is not proxy:
            await self.stop(slot_id)
            cfg = self.config
            swarm_config = SwarmConfig(
                build_id=cfg.build_id,
                sid=slot_id,
                redis_url=cfg.redis_url,
                bus_prefix=cfg.bus_prefix,
                spec=self.fleet.specs.get(slot_id, SandboxSpec()),
                timeout_s=cfg.swarm_timeout_s,
            )
            known = self.swarms[slot_id] = (proxy, await launch_swarm(swarm_config, proxy, self.fleet.warm))
        return await known[1].verify.remote(target_json(target))

    async def stop(self, slot_id: str) -> None:
        known = self.swarms.pop(slot_id, None)
        name = swarm_name(self.config.build_id, slot_id)
        handle = known[1] if known else None
        if handle is None:
            try:
                handle = get_swarm(self.config.build_id, slot_id)  # pooled (by its alias) or cold
            except ValueError:  # no swarm: nothing to stop
                return
        await stop_swarm(handle, name)
        if not await handles.wait_gone(name):
            logger.warning("build %s: %s outlived its stop", self.config.build_id, name)


class RayJudge:
    """The build's Judge actor ``build:{id}:judge`` (started with the run when the contract holds a tournament)."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self._handle: Any = None

    def handle(self) -> Any:
        """The Judge actor, started if it is not running (actor creation returns at once; its process starts behind)."""
        if self._handle is None:
            self._handle = handles.find(judge_name(self.config.build_id))
            if self._handle is None:
                cfg = self.config
                llm = cfg.llm if cfg.judge_llm else None
                self._handle = start_judge(
                    JudgeConfig(build_id=cfg.build_id, llm=llm, redis_url=cfg.redis_url, bus_prefix=cfg.bus_prefix)
                )
        return self._handle

    async def decide(self, evidence: list[Evidence], component: str) -> Decision:
        return await self.handle().decide.remote(evidence, component)
