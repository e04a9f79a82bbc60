"""Control's domain: the users' build registry, admission under quotas, the priority queue, revival.

Ray-free (floor 2). The Control actor (``actors/control.py``) owns one :class:`BuildControl`
and only translates; the process that runs a build (the BuildCoordinator actor in production,
a fake in the unit tests) is reached through the :class:`BuildRunners` port, and time through an
injected :class:`~coordinator.clock.Clock`.

* **Scoped to a user.** Every read and command names the user; another user's build is a
  :class:`BuildNotFoundError`, like a missing one, so ids cannot be probed.
* **Quotas.** A user's running builds together hold at most ``max_sandboxes_per_user``
  sandboxes (a build needs one per slot of its plan; one bigger than the quota runs alone);
  the fleet at most ``max_sandboxes`` (a build runs anyway when nothing else does).
* **Queue.** A build that does not fit waits: higher ``priority`` first, then the oldest.
  :meth:`BuildControl.admit` frees the quota of builds that ended or paused and starts the
  queued ones that now fit.
* **Revival.** :meth:`BuildControl.revive` (a restarted Control) re-queues the queued builds,
  counts and restarts the running ones and brings back the runners of the paused ones (which
  wait for ``resume``).
* **Cancel while down.** A cancel is stored first (the session's ``error`` marker), so a runner
  that is down honours it when it comes back; a queued build is cancelled on the spot.
* **Ghost mode.** Each build is registered with the webhook it notifies (its own ``notify``, else
  its owner's defaults), checked at submit (:class:`~coordinator.webhook_settings.WebhookSettings`).

Each build's :class:`Admission` is saved as ``{admissions_dir}/{id}.admission.json`` next to its
runner's config, so a restarted Control knows its priority and size.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from coordinator.api_models import FINAL_STATUSES, BuildRequest, BuildStatus, BuildSummary
from coordinator.budget import budget_status
from coordinator.build.ports import CANCEL_REQUESTED
from coordinator.clock import Clock
from coordinator.contracts import IntentContract, load_contract, parse_contract
from coordinator.placement import Placement
from coordinator.plan import plan_fleet
from coordinator.screenshots import check_name
from coordinator.store.schema import BuildSession, SessionStatus
from coordinator.store.store import Store
from coordinator.webhook_settings import WebhookSettings
from sandbox_agents.errors import BuildActiveError, InvalidInputError, LLMConfigError

logger = logging.getLogger(__name__)

MAIN_READS = ("tree", "file", "diff")
"""The reads of a build's main :meth:`BuildControl.main_read` serves."""


class Admission(BaseModel):
    """What admitting one build needs: whose it is, its priority and the sandboxes it holds while it runs."""

    model_config = ConfigDict(extra="forbid")

    build_id: str
    user_id: str
    priority: int = 0
    """Higher starts first among queued builds."""
    needed: int = 1
    """Sandboxes the build holds while running: one per slot of its plan."""


class Quotas(BaseModel):
    """How many sandboxes running builds may hold."""

    model_config = ConfigDict(extra="forbid")

    max_sandboxes_per_user: int = Field(ge=1)
    """Sandboxes one user's running builds may hold together (``MODAL_MAX_CONCURRENT``)."""
    max_sandboxes: int = Field(ge=1)
    """Sandboxes the whole fleet may hold."""


class BuildRunners(Protocol):
    """The processes that run builds, as Control drives them (the BuildCoordinator actors in production).

    Every method but :meth:`register` and :meth:`cancel` gets the build's runner, or starts it
    from what :meth:`register` saved.
    """

    def place(self, mode: str | None, runs_on: Mapping[str, str | None]) -> Placement:
        """Where a build in ``mode`` runs its sandboxes (:func:`coordinator.placement.place`).

        Raises:
            InvalidInputError: An unknown mode, or a mode this cluster cannot serve (Modal without credentials).
        """
        ...

    def register(
        self,
        build_id: str,
        llm: dict[str, Any],
        *,
        parallel: bool = True,
        placement: Placement,
        webhook: dict[str, Any] | None = None,
    ) -> None:
        """Save what the build's runner is started from (and revived from): its LLM, its placement and
        the ``WebhookConfig`` it notifies (None: none)."""
        ...

    async def start(self, build_id: str) -> None:
        """Have the runner run the build (a no-op while it runs)."""
        ...

    async def revive(self, build_id: str) -> None:
        """Bring the runner back without starting anything (a paused build waits for ``resume``)."""
        ...

    async def cancel(self, build_id: str) -> None:
        """Ask the live runner to cancel at its next step; raises when it is down (it is not started)."""
        ...

    async def resume(self, build_id: str) -> str:
        """Continue a paused build; returns its status."""
        ...

    async def raise_budget(self, build_id: str, limit_usd: float) -> dict[str, Any]:
        """Set the build's limit to ``limit_usd`` dollars; returns the budget view."""
        ...

    async def preview(self, build_id: str) -> dict[str, Any]:
        """The preview's URLs: ``{url, components}``."""
        ...

    async def screenshots(self, build_id: str) -> list[dict[str, Any]]:
        """The preview's kept screenshots, newest first (``ScreenshotView`` as JSON)."""
        ...

    async def screenshot(self, build_id: str, name: str) -> bytes:
        """The PNG of the preview's screenshot ``name``."""
        ...

    async def sandboxes(self, build_id: str) -> list[dict[str, Any]]:
        """The build's sandboxes."""
        ...

    async def take_control(self, build_id: str) -> str:
        """A URL of a new sandbox restored from the preview, the user's to change."""
        ...

    async def main_read(self, build_id: str, what: str, arg: str = "") -> dict[str, Any]:
        """A read-only view of the build's main from its gate (:mod:`coordinator.merge.browse`): ``what`` is
        ``tree``, ``file`` (``arg`` the path) or ``diff`` (``arg`` a merge commit). Never starts anything."""
        ...

    async def delete(self, build_id: str) -> None:
        """End everything an ended build still holds and remove what it left: its actors and their
        sandboxes (the preview and take-control copies too), its event log and bus keys, and its
        files under ``KRIPTIK_HOME`` (configs, actor states, the gate's repository, screenshots)."""
        ...


class BuildControl:
    """The build registry of a cluster, with its quotas, queue and revival.

    Args:
        store: The build store (sessions, slots, costs, merges).
        runners: How builds' runners are reached.
        quotas: Sandboxes running builds may hold.
        clock: Time of stored timestamps.
        admissions_dir: Where each build's :class:`Admission` is saved.
        examples_dir: ``intents/{name}.yaml`` and ``cassettes/{name}.yaml`` of the named examples.
        llm: The provider config of prompt and contract builds; None: the one ``KRIPTIK_LLM``
            names (read at each submit).
        allow_private_webhooks: The operator's allowance of webhooks to loopback, private and
            link-local addresses.
    """

    def __init__(
        self,
        store: Store,
        runners: BuildRunners,
        *,
        quotas: Quotas,
        clock: Clock,
        admissions_dir: Path,
        examples_dir: Path,
        llm: dict[str, Any] | None = None,
        allow_private_webhooks: bool = False,
    ) -> None:
        self.store = store
        self.runners = runners
        self.quotas = quotas
        self.clock = clock
        self.admissions_dir = admissions_dir
        self.examples_dir = examples_dir
        self.llm = llm
        self.webhooks = WebhookSettings(store, allow_private=allow_private_webhooks)
        self._seq = itertools.count()
        self._queue: list[tuple[int, int, str]] = []  # (-priority, seq, build id): a heap
        self._admissions: dict[str, Admission] = {}
        self._running: dict[str, Admission] = {}

    # --- the registry ------------------------------------------------------------------------------

    async def submit(self, user_id: str, request: BuildRequest) -> str:
        """Register a build, queue it and admit what fits; returns its id.

        Raises:
            InvalidInputError: An unknown example, no LLM is configured for the build, or its webhook
                (its own or its owner's defaults) is refused.
        """
        llm = self.llm or _llm_from_settings()
        contract: IntentContract | None = None
        if request.contract is not None:
            contract = parse_contract(request.contract)
        elif request.example is not None:
            path = self.examples_dir / "intents" / f"{request.example}.yaml"
            if not path.is_file():
                raise InvalidInputError(f"no example {request.example!r}", field="example")
            contract = load_contract(path)
            cassette = self.examples_dir / "cassettes" / f"{request.example}.yaml"
            if cassette.is_file():
                llm = {"type": "replay", "cassettes": [str(cassette)]}
        if llm is None:  # refuse now, with the fix, rather than fail deep inside the build's agents
            raise InvalidInputError(
                "no LLM is configured for this build: KRIPTIK_LLM=replay needs KRIPTIK_CASSETTES (or submit one of "
                "the examples, which bring their cassettes), or set KRIPTIK_LLM=anthropic|openai with its API key; "
                "these are read by `kriptik up` when it starts the cluster (set them there and restart it), not by "
                "`kriptik build`",
                field="llm",
            )
        mode = request.build_mode or (contract.build_mode if contract is not None else None)
        runs_on = {c.name: c.runs_on for c in contract.components} if contract is not None else {}
        placement = self.runners.place(mode, runs_on)  # refused here, before anything is stored
        webhook = self.webhooks.for_build(user_id, request.notify)
        prompt = request.prompt or (contract.summary if contract else "")
        budget = {"max_usd": request.budget_usd} if request.budget_usd else None
        session = self.store.create_session(user_id, prompt, budget=budget)
        if contract is not None:
            self.store.update_session(session.id, contract=contract.model_dump(mode="json"))
        needed = len(plan_fleet(contract).slots) if contract is not None else 1
        self.runners.register(session.id, llm, parallel=request.parallel, placement=placement, webhook=webhook)
        admission = Admission(build_id=session.id, user_id=user_id, priority=request.priority, needed=needed)
        self._save_admission(admission)
        self._enqueue(admission)
        await self.admit()
        return session.id

    def status(self, user_id: str, build_id: str) -> BuildStatus:
        """The build as the store has it (its runner persists every field shown)."""
        return status_view(self.store, self.store.get_session(build_id, user_id))

    def list_builds(self, user_id: str) -> list[BuildSummary]:
        """The user's builds, newest first."""
        return [summary_view(session) for session in self.store.list_sessions(user_id)]

    async def cancel(self, user_id: str, build_id: str) -> str:
        """Cancel a build; returns ``cancelled`` (it was queued), ``cancelling`` or its final status.

        The cancel is stored before the runner hears of it, so a runner that is down honours it
        when it comes back.
        """
        session = self.store.get_session(build_id, user_id)
        if session.status.value in FINAL_STATUSES:
            return session.status.value
        if build_id in self._admissions and build_id not in self._running:  # still queued: nothing runs
            self._admissions.pop(build_id)
            self.store.update_session(
                build_id, status=SessionStatus.CANCELLED, finished_at=self.clock.now(), error="cancelled by the user"
            )
            return SessionStatus.CANCELLED.value
        self.store.update_session(build_id, error=CANCEL_REQUESTED)  # durable: honoured after a restart too
        try:
            await self.runners.cancel(build_id)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the stored marker is the cancel
            logger.warning("control: the runner of %s did not take the cancel (%r); it is stored", build_id, exc)
        return "cancelling"

    async def delete(self, user_id: str, build_id: str) -> None:
        """Delete an ended build of ``user_id``: what it still runs and holds, then its rows.

        The rows go last, so a delete that fails half way can be asked again.

        Raises:
            BuildNotFoundError: No such build of this user.
            BuildActiveError: The build is queued, running or paused (cancel it first).
        """
        session = self.store.get_session(build_id, user_id)
        if session.status.value not in FINAL_STATUSES:
            raise BuildActiveError(f"build {build_id} is {session.status.value}; cancel it before deleting it")
        self._running.pop(build_id, None)  # it ended: the admission loop would free its quota anyway
        self._admissions.pop(build_id, None)
        await self.runners.delete(build_id)
        self._admission_path(build_id).unlink(missing_ok=True)
        self.store.delete_session(build_id)
        logger.info("control: build %s of %s deleted", build_id, user_id)

    async def resume(self, user_id: str, build_id: str) -> str:
        """Continue a paused build; returns the status its runner reports.

        Raises:
            InvalidInputError: The build has ended.
        """
        session = self.store.get_session(build_id, user_id)
        if session.status.value in FINAL_STATUSES:
            raise InvalidInputError(f"build {build_id} is {session.status.value}; it cannot resume", field="build_id")
        status = await self.runners.resume(build_id)
        self._running.setdefault(build_id, self._admission_of(session))
        return status

    async def raise_budget(self, user_id: str, build_id: str, usd: float) -> dict[str, Any]:
        """Add ``usd`` dollars to the build's limit; a paused build resumes.

        Raises:
            InvalidInputError: ``usd`` is not positive.
        """
        session = self.store.get_session(build_id, user_id)
        if usd <= 0:
            raise InvalidInputError("a budget raise must be positive", field="usd")
        current = (session.budget or {}).get("max_usd") or 0.0
        result = await self.runners.raise_budget(build_id, current + usd)
        self._running.setdefault(build_id, self._admission_of(session))
        return result

    async def preview(self, user_id: str, build_id: str) -> dict[str, Any]:
        self.store.get_session(build_id, user_id)
        return await self.runners.preview(build_id)

    async def screenshots(self, user_id: str, build_id: str) -> list[dict[str, Any]]:
        self.store.get_session(build_id, user_id)
        return await self.runners.screenshots(build_id)

    async def screenshot(self, user_id: str, build_id: str, name: str) -> bytes:
        """The PNG of one of the build's preview screenshots.

        Raises:
            BuildNotFoundError: An unknown build, or another user's (checked before the name).
            InvalidInputError: ``name`` is not a screenshot's name.
            ScreenshotNotFoundError: The preview keeps no screenshot of that name.
        """
        self.store.get_session(build_id, user_id)
        return await self.runners.screenshot(build_id, check_name(name))

    async def sandboxes(self, user_id: str, build_id: str) -> list[dict[str, Any]]:
        self.store.get_session(build_id, user_id)
        return await self.runners.sandboxes(build_id)

    async def take_control(self, user_id: str, build_id: str) -> str:
        self.store.get_session(build_id, user_id)
        return await self.runners.take_control(build_id)

    async def main_read(self, user_id: str, build_id: str, what: str, arg: str = "") -> dict[str, Any]:
        """Main's file tree, one of its files or a merge's diff (the builder view), the owner's only.

        Raises:
            BuildNotFoundError: An unknown build, or another user's (checked first).
            InvalidInputError: An unknown ``what``, a path that is not inside main, a commit that is not hex.
        """
        self.store.get_session(build_id, user_id)
        if what not in MAIN_READS:
            raise InvalidInputError(f"no read {what!r} of main (one of {', '.join(MAIN_READS)})", field="what")
        return await self.runners.main_read(build_id, what, arg)

    # --- queue and quotas --------------------------------------------------------------------------

    def queued(self) -> list[str]:
        """The builds waiting for admission, in the order they will be admitted."""
        return [b for _, _, b in sorted(self._queue) if b in self._admissions and b not in self._running]

    def running(self) -> list[str]:
        """The builds Control counts as running (they hold their quota)."""
        return list(self._running)

    def in_use(self, user_id: str | None = None) -> int:
        """Sandboxes the running builds hold (of ``user_id`` only, when given)."""
        return sum(a.needed for a in self._running.values() if user_id is None or a.user_id == user_id)

    async def admit(self) -> list[str]:
        """Free the quota of builds that ended or paused; start queued builds that now fit; returns those."""
        for build_id in list(self._running):
            status = self.store.get_session(build_id).status
            if status is not SessionStatus.RUNNING:
                self._running.pop(build_id)
                if status.value in FINAL_STATUSES:
                    self._admissions.pop(build_id, None)
                    self._admission_path(build_id).unlink(missing_ok=True)
        admitted, waiting = [], []
        while self._queue:
            item = heapq.heappop(self._queue)
            admission = self._admissions.get(item[2])
            if admission is None or item[2] in self._running:
                continue
            if not self._fits(admission):
                waiting.append(item)
                continue
            self._running[admission.build_id] = admission
            self.store.update_session(admission.build_id, status=SessionStatus.RUNNING)
            await self.runners.start(admission.build_id)
            admitted.append(admission.build_id)
        for item in waiting:
            heapq.heappush(self._queue, item)
        return admitted

    def _fits(self, admission: Admission) -> bool:
        user_quota = self.quotas.max_sandboxes_per_user
        needed = min(admission.needed, user_quota)  # a build bigger than the quota runs alone
        fits_user = self.in_use(admission.user_id) + needed <= user_quota
        fits_fleet = self.in_use() + needed <= self.quotas.max_sandboxes or not self._running
        return fits_user and fits_fleet

    def _enqueue(self, admission: Admission) -> None:
        self._admissions[admission.build_id] = admission
        heapq.heappush(self._queue, (-admission.priority, next(self._seq), admission.build_id))

    # --- revival -----------------------------------------------------------------------------------

    async def revive(self) -> None:
        """After a (re)start: queued builds queue again, running ones run again, paused ones get their runner.

        One build that cannot be revived is logged and does not stop the others.
        """
        for session in self.store.active_sessions():
            admission = self._admission_of(session)
            if session.status is SessionStatus.QUEUED:
                self._enqueue(admission)
                continue
            try:
                if session.status is SessionStatus.RUNNING:
                    self._running[session.id] = admission
                    await self.runners.start(session.id)
                else:
                    await self.runners.revive(session.id)
            except Exception:  # noqa: BLE001 - one build that cannot be revived must not stop the others
                logger.exception("control: could not revive build %s", session.id)

    # --- admissions on disk ------------------------------------------------------------------------

    def _admission_path(self, build_id: str) -> Path:
        return self.admissions_dir / f"{build_id}.admission.json"

    def _save_admission(self, admission: Admission) -> None:
        self.admissions_dir.mkdir(parents=True, exist_ok=True)
        self._admission_path(admission.build_id).write_text(admission.model_dump_json())

    def _admission_of(self, session: BuildSession) -> Admission:
        """The build's saved admission; a default one (priority 0, one sandbox) when none was saved."""
        try:
            return Admission.model_validate_json(self._admission_path(session.id).read_text())
        except (FileNotFoundError, ValueError):
            return Admission(build_id=session.id, user_id=session.user_id)


def _llm_from_settings() -> dict[str, Any] | None:
    """The LLM that ``KRIPTIK_LLM`` (and its keys or ``KRIPTIK_CASSETTES``) names, or None if unusable."""
    from sandbox_agents.llm.config import llm_config
    from sandbox_agents.settings import get_settings

    try:
        return llm_config(get_settings().kriptik_llm).model_dump(mode="json")
    except LLMConfigError:
        return None


# --- views -----------------------------------------------------------------------------------------


def status_view(store: Store, session: BuildSession) -> BuildStatus:
    """The stored session as a :class:`BuildStatus` (the runner persists every field shown).

    Control answers ``status`` with it, and so does the API replica's store fast path
    (``serve/store_status.py``): the same function over the same rows.
    """
    budget = session.budget or {}
    totals = store.cost_totals(session.id)
    spent = totals.estimated_cost
    history = store.merges(session.id)
    merges = [
        {
            "component": m.component,
            "status": m.status,
            "slot": m.ref.get("slot"),
            "commit": m.commit,
            "at": m.resolved_at or m.created_at,
            "message": m.reason,
        }
        for m in history
    ]
    commits = [m.commit for m in history if m.status == "merged" and m.commit]
    return BuildStatus.model_validate(
        {
            "id": session.id,
            "user_id": session.user_id,
            "status": session.status.value,
            "phase": session.phase,
            "components": [
                {
                    "slot": s.slot,
                    "component": s.component,
                    "candidate": s.candidate,
                    "sandbox_id": s.sandbox_id,
                    "last_sandbox_id": s.last_sandbox_id,
                    "status": s.status,
                    "agents": s.agents,
                    "swarm_score": s.swarm_score,
                }
                for s in store.list_slots(session.id)
            ],
            "preview_url": session.preview_url,
            "main_commit": commits[-1] if commits else None,
            "budget": {
                "limit_usd": budget.get("max_usd") or 0.0,
                "spent_usd": round(spent, 6),
                "llm_tokens": totals.llm_tokens,
                "compute_seconds": round(totals.compute_seconds, 3),
                "status": budget_status(budget, spent).value,
                "warn_fraction": budget.get("warn_fraction", 0.8),
            },
            "merges": merges,
            "started_at": session.started_at,
            "finished_at": session.finished_at,
            "error": session.error,
        }
    )


def summary_view(session: BuildSession) -> BuildSummary:
    """One line of a user's build list: the contract's name, else the prompt's first line."""
    return BuildSummary(
        id=session.id,
        status=session.status.value,
        phase=session.phase,
        title=(session.contract or {}).get("name") or session.prompt.split("\n", 1)[0][:120],
        started_at=session.started_at,
        finished_at=session.finished_at,
    )
