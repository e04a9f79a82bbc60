"""The merge gate's logic (Phase 4): verified merges into ``main``, one at a time, in dependency order.

A component's winning slot asks to merge with a :class:`MergeRequest`: the sha256 of every
file of its workspace. :meth:`MergeGateCore.admit` waits for the component's turn
(:class:`MergeQueue`: every component it ``depends_on`` merged first, one merge at a time),
leaves out what may not reach ``main`` (:func:`~coordinator.merge.screen.screen_request`:
git metadata, root ``.gitattributes``/``.gitignore``, symlinks pointing out…, each named in a
finding), commits only what differs from ``main`` onto the branch ``merge/{component}`` of
the main repo — a bare repository on the gate's host that no candidate code can reach —
brings the main-test sandbox's plain copy of the tree (no ``.git``) to that branch, restarts
the dev servers of the merged components, runs the full verification swarm and every success
criterion of the components merged so far, and fast-forwards ``main`` only if all of that
passes. A rejection leaves ``main`` untouched, returns the findings to the component's team
and replaces the main-test sandbox with a fresh one holding ``main`` (no process or file the
candidate left survives), where the merged components' servers are started again.

Everything reaches the world through ports passed in by the actor (``actors/merge_gate.py``):
the main repo, the main-test copy, the slot's files, the swarm, the criteria and the dev
servers, so this module is tested with fakes and never imports Ray.

The request/result models, :func:`is_junk` and the port protocols are in
``coordinator/merge/models.py``; the refusal rules in ``coordinator/merge/screen.py``; the
repository on the host (:class:`HostGitRepo`) in ``coordinator/merge/host_repo.py``; the ports
over the main-test sandbox (:class:`SandboxMainCopy`, :class:`SandboxDevServers`,
:func:`sandbox_satisfy`, :func:`request_from_sandbox`) in ``coordinator/merge/sandbox.py``.
They are re-exported here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from coordinator.bus.events import EventPayload, MergeAccepted, MergeQueued, MergeRejected
from coordinator.contracts import IntentContract
from coordinator.intent import CriterionResult
from coordinator.merge.models import (
    MAX_TREE_BYTES,
    DevServerPort,
    EventPort,
    FetchFile,
    MainCopy,
    MainRepo,
    MergeRequest,
    MergeResult,
    Satisfy,
    StaleRequestError,
    Verify,
    is_junk,
    sha256_of,
)
from coordinator.merge.screen import MainState, Screened, screen_request
from sandbox_agents.errors import InvalidInputError
from sandbox_agents.verifiers.base import DesignTokens as VerifierTokens
from sandbox_agents.verifiers.base import VerifyTarget
from sandbox_agents.verifiers.models import Finding, Severity, SwarmReport, finding_lines

__all__ = [
    "MergeGateCore",
    "MergeQueue",
    "changed_files",
    "criteria_for",
    "failure_reason",
    "verify_target",
]

logger = logging.getLogger(__name__)

# --- the queue -------------------------------------------------------------------------------


class MergeQueue:
    """Admits one merge at a time, each only after every component it depends on is merged.

    A request whose dependency is missing or was rejected is held (never dropped) until that
    dependency merges; among ready requests the oldest goes first.
    """

    def __init__(self, depends_on: Mapping[str, tuple[str, ...] | list[str]], merged: list[str] | None = None) -> None:
        self.depends_on = {k: tuple(v) for k, v in depends_on.items()}
        self.merged: list[str] = list(merged or [])
        self._waiting: list[tuple[int, str]] = []
        self._busy = False
        self._seq = 0
        self._changed = asyncio.Condition()

    def missing(self, component: str) -> list[str]:
        """Dependencies of ``component`` not merged yet."""
        if component not in self.depends_on:
            raise InvalidInputError(f"no component {component!r} in the contract", field="component")
        return [d for d in self.depends_on[component] if d not in self.merged]

    def held(self) -> dict[str, list[str]]:
        """Waiting components and the dependencies each still waits for."""
        return {c: self.missing(c) for _, c in self._waiting}

    def _next(self) -> int | None:
        ready = [seq for seq, c in self._waiting if not self.missing(c)]
        return ready[0] if ready and not self._busy else None

    async def acquire(self, component: str) -> None:
        """Wait for ``component``'s turn; the caller must :meth:`release` afterwards."""
        self.missing(component)
        self._seq += 1
        ticket = (self._seq, component)
        async with self._changed:
            self._waiting.append(ticket)
            try:
                await self._changed.wait_for(lambda: self._next() == ticket[0])
            finally:
                self._waiting.remove(ticket)
            self._busy = True

    async def release(self, component: str, *, merged: bool) -> None:
        async with self._changed:
            self._busy = False
            if merged and component not in self.merged:
                self.merged.append(component)
            self._changed.notify_all()


# --- the gate --------------------------------------------------------------------------------

_KINDS = {"frontend": "web"}


def verify_target(contract: IntentContract, component: str, urls: Mapping[str, str], merged: list[str]) -> VerifyTarget:
    """What the swarm checks for one merge: the whole repo, looked at through the app's page if there is one."""
    comp = contract.component(component)
    page = comp if comp.kind == "frontend" and comp.name in urls else None
    if page is None:  # a backend merge must not break the page already merged
        page = next(
            (c for c in contract.components if c.kind == "frontend" and c.name in urls and c.name in merged), None
        )
    tokens = None
    if comp.design is not None and (comp.design.colors or comp.design.fonts):
        tokens = VerifierTokens(colors=list(comp.design.colors.values()), fonts=list(comp.design.fonts.values()))
    return VerifyTarget(
        kind="web" if page is not None else "library",
        root=".",
        dev_url=urls[page.name] if page is not None else None,
        tokens=tokens,
        name=f"merge-{component}",
    )


def criteria_for(contract: IntentContract, merged: list[str]) -> IntentContract | None:
    """The contract cut down to the criteria of merged components (global ones once all are merged)."""
    everything = {c.name for c in contract.components} <= set(merged)
    chosen = [
        c for c in contract.success_criteria if (c.component in merged if c.component is not None else everything)
    ]
    return contract.model_copy(update={"success_criteria": tuple(chosen)}) if chosen else None


def changed_files(wanted: Mapping[str, str], main: Mapping[str, str]) -> dict[str, str]:
    """Files of a request that are not junk and differ from (or are missing in) ``main``."""
    return {p: h for p, h in sorted(wanted.items()) if not is_junk(p) and main.get(p) != h}


class MergeGateCore:
    """Verified, ordered merges into the main repo. See the module docstring.

    Args:
        contract: The locked build's contract.
        repo: The main repo port (on the gate's host).
        fetch: Reads a file of the requesting slot.
        verify: The verification swarm on the main-test sandbox.
        satisfy: Runs criteria against the main-test sandbox's servers.
        servers: The main-test sandbox's dev servers.
        events: Where merge events and findings go (optional).
        copy: The tree's copy in the main-test sandbox, where the checks (candidate code) run.
        swarm_must_pass: When False, swarm errors are reported but do not reject (criteria still do).
        clock: Monotonic clock for durations.
    """

    def __init__(
        self,
        contract: IntentContract,
        repo: MainRepo,
        fetch: FetchFile,
        verify: Verify,
        satisfy: Satisfy,
        servers: DevServerPort,
        events: EventPort | None = None,
        *,
        copy: MainCopy,
        swarm_must_pass: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.contract = contract
        self.repo = repo
        self.copy = copy
        self.fetch = fetch
        self.verify = verify
        self.satisfy = satisfy
        self.servers = servers
        self.events = events
        self.swarm_must_pass = swarm_must_pass
        self.clock = clock
        self.queue = MergeQueue({c.name: c.depends_on for c in contract.components})
        self._started = False
        self._copy_dirty = False
        """The main-test copy may hold more than ``main`` (an attempt ran there): reset before trusting it."""
        self._copy_checked = False
        """An accepted merge's checks ran in the copy: what they wrote is undone before the next attempt."""

    async def start(self) -> None:
        """Initialise (or recover) the main repo and learn what is merged already.

        A recovered repo means a restarted gate, perhaps cut short mid-merge: the main-test
        sandbox may hold a candidate's files and processes, so it is replaced by a fresh one
        holding ``main`` (and the merged components' servers are started there again).
        """
        created = await self.repo.init()
        self.queue.merged = await self.repo.merged()
        self._started = True
        if not created:
            self._copy_dirty = True
            await self._restore()

    async def admit(self, request: MergeRequest) -> MergeResult:
        """Merge ``request`` when its turn comes, only if everything passes.

        Returns:
            The verdict; on rejection ``main`` is unchanged and ``findings`` say why. An attempt
            that fails (git, the main-test sandbox, the swarm) is a rejection of this candidate
            whose reason names the error: the build goes on, and the next request is tried.

        Raises:
            InvalidInputError: The component is not in the contract.
        """
        if not self._started:
            await self.start()
        missing = self.queue.missing(request.component)
        await self._emit(MergeQueued(component=request.component, slot=request.slot, waiting_for=missing))
        await self.queue.acquire(request.component)
        accepted = False
        try:
            result = await self._attempt_or_reject(request)
            accepted = result.accepted
        finally:
            await self.queue.release(request.component, merged=accepted)
        told: dict[str, Any] = {"component": request.component, "slot": request.slot, "commit": result.commit}
        told |= {"changed": result.changed, "reason": result.reason}
        if result.accepted:
            await self._emit(MergeAccepted.model_validate(told))
        else:  # the findings, one line each, as the team's fix task gets them
            await self._emit(MergeRejected.model_validate({**told, "findings": finding_lines(result.findings)}))
        if self.events is not None:  # an accepted merge resolves what an earlier rejection reported
            await self.events.report_findings(request.component, [] if result.accepted else result.findings)
        return result

    async def _attempt_or_reject(self, request: MergeRequest) -> MergeResult:
        """:meth:`_attempt`, or a rejection naming the error that broke it (``main`` stays as it was)."""
        started = self.clock()
        try:
            return await self._attempt(request)
        except Exception as exc:  # noqa: BLE001 - one broken attempt rejects its candidate, not the build
            logger.warning("merge of %s from %s failed", request.component, request.slot, exc_info=True)
            reason = f"the merge gate failed while checking it: {failure_reason(exc)}"
            try:
                tree_hash = await self.repo.tree_hash()
            except Exception:  # noqa: BLE001 - the verdict stands without it
                tree_hash = ""
            return MergeResult(
                tree_hash=tree_hash,
                component=request.component,
                slot=request.slot,
                accepted=False,
                findings=[Finding(message=reason, rule="merge.gate_error")],
                reason=reason,
                duration_s=round(self.clock() - started, 3),
            )

    async def _attempt(self, request: MergeRequest) -> MergeResult:
        started = self.clock()
        component = request.component
        branch = f"merge/{component}"
        if self._copy_dirty:  # a reset that failed before, or strays an accepted candidate wrote
            await self._restore()
        elif self._copy_checked:
            await self._tidy()
        screened = await self._screen(request)
        changed, links, deletes = screened.files, screened.links, screened.deleted
        refusals = screened.findings

        async def verdict(accepted: bool, reason: str, findings: list[Finding] | None = None, **kw: Any) -> MergeResult:
            return MergeResult(
                tree_hash=await self.repo.tree_hash(),
                component=component,
                slot=request.slot,
                accepted=accepted,
                changed=sorted([*changed, *links, *deletes]),
                findings=[*refusals, *(findings or [])],
                reason=reason + _refused_note(screened),
                duration_s=round(self.clock() - started, 3),
                **kw,
            )

        if component in self.queue.merged and not (changed or links or deletes or refusals):
            # the same candidate admitted again (a request re-sent by a restarted coordinator while
            # the first admission was still running here): it is in main already, so no second commit
            return await verdict(True, "already in main: nothing changed", commit=await self.repo.head())
        try:
            writes = await self._fetch(request, changed)
        except StaleRequestError as exc:
            return await verdict(False, str(exc))
        message = request.message or f"merge {component} from {request.slot}"
        merged = [*self.queue.merged, *([component] if component not in self.queue.merged else [])]
        strays: list[Finding] = []
        try:
            await self.repo.stage(branch, writes, deletes, f"{message}\n\nKriptik-Component: {component}", links=links)
            self._copy_dirty = True
            await self.copy.apply(writes, links, deletes)
            findings, criteria, swarm = await self._check(component, merged)
            strays = await self._strays()
        except BaseException:  # main must stay as it was, whatever broke (or cancelled) the attempt
            try:
                await self.repo.discard(branch)
            except Exception:  # noqa: BLE001 - the attempt's own failure is the one to raise
                logger.warning("merge of %s: discarding branch %s failed", component, branch, exc_info=True)
            if self._copy_dirty:  # candidate code may have run there
                await self._restore_quietly(component)
            raise
        if findings:
            await self.repo.discard(branch)
            await self._restore_quietly(component)
            reason = f"{len(findings)} finding(s): " + "; ".join(f.message.splitlines()[0][:160] for f in findings[:3])
            return await verdict(False, reason, [*findings, *strays], criteria=criteria, swarm=swarm)
        commit = await self.repo.accept(branch)
        self._copy_dirty = bool(strays)  # git files the candidate left: renew the sandbox before the next attempt
        self._copy_checked = True  # else the copy is main plus what the checks wrote: tidied before the next one
        return await verdict(True, "all checks passed", strays, commit=commit, criteria=criteria, swarm=swarm)

    async def _screen(self, request: MergeRequest) -> Screened:
        """The request's changes against ``main``, refused paths left out (and named)."""
        files, links, owners = await asyncio.gather(self.repo.files(), self.repo.links(), self.repo.owners())
        return screen_request(request, MainState(files=files, links=links, owners=owners))

    async def _strays(self) -> list[Finding]:
        """Warnings naming git metadata or rule files that candidate code wrote into the main-test copy."""
        paths = await self.copy.strays()
        why = "candidate code wrote it in the main-test sandbox, which holds no git repository: main's history "
        why += "is kept on the gate's host, so it changed nothing in main"
        return [
            Finding(file=p, message=f"{p}: {why}", rule="merge.sandbox_git_write", severity=Severity.WARNING)
            for p in paths[:50]
        ]

    async def _tidy(self) -> None:
        """Undo in the copy what an accepted merge's checks wrote, as ``git checkout -f`` and ``git clean`` would.

        A component's own tests may store data next to its code (a JSON file, a database): the next
        merge's checks start from ``main`` as it is, not from that data. Installed dependencies and
        other junk stay; the dev servers are restarted by the checks anyway. If this fails, the
        sandbox is renewed instead.
        """
        try:
            stale, extra = await self.copy.drift(await self.repo.files())
            if stale or extra:
                tree = await self.repo.tree(MAX_TREE_BYTES)
                await self.copy.apply({p: tree[p] for p in stale if p in tree}, {}, extra)
                logger.info(
                    "main-test copy: %d file(s) of main put back, %d left by checks removed", len(stale), len(extra)
                )
        except Exception:  # noqa: BLE001 - a fresh sandbox holding main does the same
            logger.warning("tidying the main-test sandbox failed; renewing it", exc_info=True)
            await self._restore()
            return
        self._copy_checked = False

    async def _restore(self) -> None:
        """Replace the main-test sandbox by a fresh one holding ``main``, and serve the merged components there."""
        files, links = await asyncio.gather(self.repo.tree(MAX_TREE_BYTES), self.repo.links())
        await self.copy.reset(files, links)
        self._copy_dirty = self._copy_checked = False
        serving = [c for c in self.contract.components if c.name in self.queue.merged]
        if serving:
            _, problems = await self.servers.restart(serving)
            for finding in problems:
                logger.warning("main-test sandbox after a reset: %s", finding.message)

    async def _restore_quietly(self, component: str) -> None:
        """:meth:`_restore` after a failed attempt; if it fails too, the next attempt tries again first."""
        try:
            await self._restore()
        except Exception:  # noqa: BLE001 - main is intact; the copy stays marked dirty
            logger.warning("merge of %s: resetting the main-test sandbox failed", component, exc_info=True)

    async def _fetch(self, request: MergeRequest, changed: Mapping[str, str]) -> dict[str, bytes]:
        blobs = await asyncio.gather(*(self.fetch(request, p) for p in changed))
        writes = dict(zip(changed, blobs, strict=True))
        for path, data in writes.items():
            if sha256_of(data) != changed[path]:
                raise StaleRequestError(f"{path} changed in slot {request.slot} since the request", field="files")
        return writes

    async def _check(
        self, component: str, merged: list[str]
    ) -> tuple[list[Finding], list[CriterionResult], SwarmReport | None]:
        # Every merged component: its dependencies are installed (the install phase) and its server started.
        serving = [c for c in self.contract.components if c.name in merged]
        urls, findings = await self.servers.restart(serving)
        swarm = await self.verify(verify_target(self.contract, component, urls, merged))
        if self.swarm_must_pass and not swarm.passed:
            findings += [f for r in swarm.reports for f in r.findings if f.severity == Severity.ERROR]
        criteria: list[CriterionResult] = []
        sub = criteria_for(self.contract, merged)
        if sub is not None:
            criteria = (await self.satisfy(sub, urls)).results
            findings += [
                Finding(message=f"criterion {r.id} failed: {r.evidence}"[:2000], rule=f"criterion.{r.type}")
                for r in criteria
                if not r.passed
            ]
        return findings, criteria, swarm

    async def _emit(self, event: EventPayload) -> None:
        if self.events is not None:
            await self.events.emit(event)

    # --- reads -------------------------------------------------------------------------------

    async def head(self) -> str:
        return await self.repo.head()

    async def tree_hash(self) -> str:
        return await self.repo.tree_hash()

    async def tree(self, max_bytes: int = MAX_TREE_BYTES) -> dict[str, bytes]:
        """Every file of ``main`` (to seed dependents and the preview)."""
        return await self.repo.tree(max_bytes)

    def merged(self) -> list[str]:
        return list(self.queue.merged)

    def held(self) -> dict[str, list[str]]:
        return self.queue.held()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_TRACEBACK = "Traceback (most recent call last)"


def failure_reason(exc: BaseException, limit: int = 1000) -> str:
    """An error as a team or a user reads it: its type and message, no colour codes, no traceback.

    An error raised in another process (Ray's ``RayTaskError``) carries the original as ``cause``
    and the remote traceback in its own text: the original is the one told.
    """
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [line.rstrip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    if any(line.startswith(_TRACEBACK) for line in lines):
        lines = lines[-1:]  # the traceback's last line is the error itself
    text = f"{type(exc).__name__}: " + "\n".join(lines)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _refused_note(screened: Screened) -> str:
    refused = screened.refused
    if not refused:
        return ""
    return f"; refused {len(refused)} path(s): " + ", ".join(refused[:5]) + (" …" if len(refused) > 5 else "")
