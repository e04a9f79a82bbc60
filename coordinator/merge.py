"""The merge gate's logic (Phase 4): verified merges into ``main``, one at a time, in dependency order.

A component's winning slot asks to merge with a :class:`MergeRequest`: the sha256 of every
file of its workspace. :meth:`MergeGateCore.admit` waits for the component's turn
(:class:`MergeQueue`: every component it ``depends_on`` merged first, one merge at a time),
writes only what differs from ``main`` onto the branch ``merge/{component}`` of the main
repo (which lives in the main-test sandbox), commits, restarts the dev servers of the merged
components, runs the full verification swarm and every success criterion of the components
merged so far, and fast-forwards ``main`` only if all of that passes. A rejection leaves
``main`` untouched and returns the findings to the component's team.

Everything reaches the world through ports passed in by the actor (``actors/merge_gate.py``):
the main repo, the slot's files, the swarm, the criteria and the dev servers, so this module
is tested with fakes and never imports Ray. :class:`GitMainRepo` and :class:`SandboxDevServers`
are the concrete repo and dev-server ports over any :class:`~sandbox_agents.backends.base.Sandbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import posixpath
import shlex
import tarfile
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field

from coordinator.contracts import Component, IntentContract
from coordinator.intent import CriterionResult, SatisfactionReport, check_satisfaction, lock
from sandbox_agents.backends.base import Sandbox
from sandbox_agents.errors import InvalidInputError, SandboxError
from sandbox_agents.verifiers.base import DesignTokens as VerifierTokens
from sandbox_agents.verifiers.base import VerifyTarget
from sandbox_agents.verifiers.models import Finding, Severity, SwarmReport

logger = logging.getLogger(__name__)

#: Directories never merged: dependencies, build output, caches, VCS data.
JUNK_DIRS = frozenset(
    {
        "node_modules",
        "__pycache__",
        ".git",
        ".venv",
        "venv",
        "dist",
        "build",
        ".cache",
        ".next",
        ".nuxt",
        ".vite",
        "coverage",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".turbo",
    }
)
#: File suffixes never merged (compiled byte-code, editor swap files, logs).
JUNK_SUFFIXES = (".pyc", ".pyo", ".swp", ".log")
#: Most bytes :meth:`MergeGateCore.tree` hands out (dependents are seeded from it).
MAX_TREE_BYTES = 64 * 1024 * 1024
SHA256 = r"^[0-9a-f]{64}$"


def is_junk(path: str) -> bool:
    """Whether a workspace path is generated or cached rather than source worth merging."""
    parts = posixpath.normpath(path).split("/")
    return any(p in JUNK_DIRS for p in parts[:-1]) or parts[-1] in JUNK_DIRS or parts[-1].endswith(JUNK_SUFFIXES)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MergeRequest(BaseModel):
    """A slot asks to merge its component: what its workspace holds, by content hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    build_id: str = Field(min_length=1)
    component: str = Field(min_length=1)
    """Component of the contract being merged."""
    slot: str = Field(min_length=1)
    """The slot whose workspace holds the candidate (``frontend`` or ``frontend~minimal``)."""
    files: dict[str, str]
    """Workspace-relative path → sha256 of every file to merge (junk is ignored)."""
    deleted: tuple[str, ...] = ()
    """Paths to delete from ``main`` (a file merely absent from ``files`` is kept)."""
    message: str = ""
    """Summary for the commit message."""


class MergeResult(BaseModel):
    """The gate's verdict on one request."""

    model_config = ConfigDict(extra="forbid")

    component: str
    slot: str
    accepted: bool
    commit: str | None = None
    """``main``'s head after an accepted merge; None on rejection."""
    tree_hash: str = ""
    """``main^{tree}`` after the attempt (unchanged on rejection)."""
    changed: list[str] = Field(default_factory=list)
    """Paths written or deleted on the merge branch."""
    findings: list[Finding] = Field(default_factory=list)
    """Errors of the swarm and of failing criteria (for the component's team)."""
    criteria: list[CriterionResult] = Field(default_factory=list)
    swarm: SwarmReport | None = None
    reason: str = ""
    duration_s: float = 0.0


class StaleRequestError(InvalidInputError):
    """A file's content no longer matches the hash in the request (the slot changed since)."""


# --- ports -----------------------------------------------------------------------------------


class MainRepo(Protocol):
    """The main repo in the main-test sandbox (:class:`GitMainRepo`)."""

    async def init(self) -> None:
        """Create ``main`` with an empty first commit, or recover from an interrupted merge."""
        ...

    async def files(self) -> dict[str, str]:
        """Path → sha256 of every file of ``main``."""
        ...

    async def stage(self, branch: str, writes: Mapping[str, bytes], deletes: list[str], message: str) -> str:
        """Branch off ``main``, apply the changes, commit; returns the commit."""
        ...

    async def accept(self, branch: str) -> str:
        """Fast-forward ``main`` to ``branch`` and drop it; returns ``main``'s head."""
        ...

    async def discard(self, branch: str) -> None:
        """Check out ``main`` again and delete ``branch``."""
        ...

    async def head(self) -> str: ...

    async def tree_hash(self) -> str: ...

    async def tree(self, max_bytes: int) -> dict[str, bytes]: ...

    async def merged(self) -> list[str]:
        """Components merged into ``main``, oldest first (from the commits' trailers)."""
        ...


#: Reads one file of a request's slot: (request, path) -> bytes.
FetchFile = Callable[[MergeRequest, str], Awaitable[bytes]]
#: Runs the verification swarm on the main-test sandbox.
Verify = Callable[[VerifyTarget], Awaitable[SwarmReport]]
#: Checks criteria of a (sub-)contract against the served app: (contract, component → URL) -> report.
Satisfy = Callable[[IntentContract, Mapping[str, str]], Awaitable[SatisfactionReport]]


class DevServerPort(Protocol):
    async def restart(self, components: list[Component]) -> tuple[dict[str, str], list[Finding]]:
        """(Re)start the components' dev servers; their URLs, and findings for those that never answered."""
        ...


class EventPort(Protocol):
    async def emit(self, kind: str, data: dict[str, Any]) -> None: ...

    async def report_findings(self, component: str, findings: list[Finding]) -> None: ...


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
        repo: The main repo port.
        fetch: Reads a file of the requesting slot.
        verify: The verification swarm on the main-test sandbox.
        satisfy: Runs criteria against the main-test sandbox's servers.
        servers: The main-test sandbox's dev servers.
        events: Where merge events and findings go (optional).
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
        swarm_must_pass: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.contract = contract
        self.repo = repo
        self.fetch = fetch
        self.verify = verify
        self.satisfy = satisfy
        self.servers = servers
        self.events = events
        self.swarm_must_pass = swarm_must_pass
        self.clock = clock
        self.queue = MergeQueue({c.name: c.depends_on for c in contract.components})
        self._started = False

    async def start(self) -> None:
        """Initialise (or recover) the main repo and learn what is merged already."""
        await self.repo.init()
        self.queue.merged = await self.repo.merged()
        self._started = True

    async def admit(self, request: MergeRequest) -> MergeResult:
        """Merge ``request`` when its turn comes, only if everything passes.

        Returns:
            The verdict; on rejection ``main`` is unchanged and ``findings`` say why.

        Raises:
            InvalidInputError: The component is not in the contract.
        """
        if not self._started:
            await self.start()
        self.queue.missing(request.component)
        await self._emit("merge.queued", request, waiting_for=self.queue.missing(request.component))
        await self.queue.acquire(request.component)
        accepted = False
        try:
            result = await self._attempt(request)
            accepted = result.accepted
        finally:
            await self.queue.release(request.component, merged=accepted)
        kind = "merge.accepted" if result.accepted else "merge.rejected"
        await self._emit(kind, request, **result.model_dump(mode="json", include={"commit", "changed", "reason"}))
        if self.events is not None:  # an accepted merge resolves what an earlier rejection reported
            await self.events.report_findings(request.component, [] if result.accepted else result.findings)
        return result

    async def _attempt(self, request: MergeRequest) -> MergeResult:
        started = self.clock()
        component = request.component
        branch = f"merge/{component}"
        changed = changed_files(request.files, await self.repo.files())
        deletes = sorted(p for p in request.deleted if not is_junk(p) and p not in request.files)

        async def verdict(accepted: bool, reason: str, **kw: Any) -> MergeResult:
            return MergeResult(
                tree_hash=await self.repo.tree_hash(),
                component=component,
                slot=request.slot,
                accepted=accepted,
                changed=sorted([*changed, *deletes]),
                reason=reason,
                duration_s=round(self.clock() - started, 3),
                **kw,
            )

        try:
            writes = await self._fetch(request, changed)
        except StaleRequestError as exc:
            return await verdict(False, str(exc))
        message = request.message or f"merge {component} from {request.slot}"
        merged = [*self.queue.merged, *([component] if component not in self.queue.merged else [])]
        try:
            await self.repo.stage(branch, writes, deletes, f"{message}\n\nKriptik-Component: {component}")
            findings, criteria, swarm = await self._check(component, merged)
        except BaseException:  # main must stay as it was, whatever broke (or cancelled) the attempt
            with contextlib.suppress(Exception):
                await self.repo.discard(branch)
            raise
        if findings:
            await self.repo.discard(branch)
            reason = f"{len(findings)} finding(s): " + "; ".join(f.message.splitlines()[0][:160] for f in findings[:3])
            return await verdict(False, reason, findings=findings, criteria=criteria, swarm=swarm)
        commit = await self.repo.accept(branch)
        return await verdict(True, "all checks passed", commit=commit, criteria=criteria, swarm=swarm)

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
        serving = [c for c in self.contract.components if c.name in merged and c.dev_server is not None]
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

    async def _emit(self, kind: str, request: MergeRequest, **data: Any) -> None:
        if self.events is not None:
            await self.events.emit(kind, {"component": request.component, "slot": request.slot, **data})

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


def sandbox_satisfy(sandbox: Any, ui_checker: Any = None) -> Satisfy:
    """The default criteria port: :func:`check_satisfaction` over a :class:`SandboxCriterionRunner`."""
    from coordinator.intent import SandboxCriterionRunner

    async def satisfy(contract: IntentContract, urls: Mapping[str, str]) -> SatisfactionReport:
        bases = dict(urls)
        bases.setdefault("", next(iter(urls.values()), "http://127.0.0.1:9"))  # criteria naming no component
        runner = SandboxCriterionRunner(sandbox, bases, ui_checker)
        return await check_satisfaction(lock(contract), runner)

    return satisfy


# --- concrete ports over a sandbox -------------------------------------------------------------


class MergeGitError(SandboxError):
    """A git command in the main-test sandbox failed; ``output`` is its stderr and stdout."""

    def __init__(self, message: str, *, sandbox_id: str | None = None, output: str = "") -> None:
        super().__init__(message, sandbox_id=sandbox_id)
        self.output = output


_GIT = [
    "git",
    "-c",
    "user.name=KripTik Merge Gate",
    "-c",
    "user.email=gate@kriptik.invalid",
    "-c",
    "core.quotePath=off",
]
_TAR = ".git/kriptik-main.tar"


class GitMainRepo:
    """The main repo as a git repository in a sandbox's workspace (git runs inside the sandbox)."""

    def __init__(self, sandbox: Sandbox, *, timeout_s: float = 120.0) -> None:
        self.sandbox = sandbox
        self.timeout_s = timeout_s

    async def _git(self, *args: str, stdin: str | None = None, ok: tuple[int, ...] = (0,)) -> str:
        result = await self.sandbox.exec([*_GIT, *args], timeout=self.timeout_s, stdin=stdin)
        if result.exit_code not in ok:
            output = (result.stderr + result.stdout)[-2000:]
            raise MergeGitError(
                f"git {args[0]} failed ({result.exit_code}): {output}", sandbox_id=self.sandbox.id, output=output
            )
        return result.stdout

    async def init(self) -> None:
        if (await self.sandbox.exec([*_GIT, "rev-parse", "--verify", "-q", "main"], timeout=self.timeout_s)).exit_code:
            await self._git("init", "-q", "-b", "main", ".")
            exclude = "".join(f"{d}/\n" for d in sorted(JUNK_DIRS)) + "".join(f"*{s}\n" for s in JUNK_SUFFIXES)
            await self.sandbox.write_file(".git/info/exclude", exclude)
            await self._git("commit", "-q", "--allow-empty", "-m", "main: initial empty commit")
            return
        await self._git("checkout", "-q", "-f", "main")  # recover from a merge cut short by a restart
        for branch in (await self._git("for-each-ref", "--format=%(refname:short)", "refs/heads/merge/")).split():
            await self._git("branch", "-q", "-D", branch)

    async def files(self) -> dict[str, str]:
        await self._git("checkout", "-q", "-f", "main")
        result = await self.sandbox.exec("git ls-files -z | xargs -0 -r sha256sum", timeout=self.timeout_s)
        out: dict[str, str] = {}
        for line in result.stdout.splitlines():
            digest, _, path = line.partition("  ")
            if digest.startswith("\\"):  # sha256sum escapes names holding newlines or backslashes
                digest, path = digest[1:], path.replace("\\n", "\n").replace("\\\\", "\\")
            out[path] = digest
        return out

    async def stage(self, branch: str, writes: Mapping[str, bytes], deletes: list[str], message: str) -> str:
        await self._git("checkout", "-q", "-f", "-B", branch, "main")
        for path, data in writes.items():
            await self.sandbox.write_file(path, data)
        if deletes:
            await self._git("rm", "-q", "-f", "--ignore-unmatch", "--pathspec-from-file=-", stdin="\n".join(deletes))
        if writes:
            await self._git("add", "--pathspec-from-file=-", stdin="\n".join(writes))
        await self._git("commit", "-q", "--allow-empty", "-F", "-", stdin=message)
        return (await self._git("rev-parse", "HEAD")).strip()

    async def accept(self, branch: str) -> str:
        await self._git("checkout", "-q", "main")
        await self._git("merge", "-q", "--ff-only", branch)
        await self._git("branch", "-q", "-D", branch)
        return await self.head()

    async def discard(self, branch: str) -> None:
        await self._git("checkout", "-q", "-f", "main")
        await self._git("branch", "-q", "-D", branch, ok=(0, 1))

    async def head(self) -> str:
        return (await self._git("rev-parse", "main")).strip()

    async def tree_hash(self) -> str:
        return (await self._git("rev-parse", "main^{tree}")).strip()

    async def tree(self, max_bytes: int) -> dict[str, bytes]:
        listing = await self._git("ls-tree", "-r", "-l", "main")
        size = sum(int(line.split()[3]) for line in listing.splitlines() if line.split()[3].isdigit())
        if size > max_bytes:
            raise InvalidInputError(f"main holds {size} bytes, more than {max_bytes}", field="max_bytes")
        await self._git("archive", "--format=tar", "-o", _TAR, "main")
        try:
            blob = await self.sandbox.read_file(_TAR)
        finally:
            await self.sandbox.remove(_TAR)
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]

    async def merged(self) -> list[str]:
        log = await self._git("log", "--reverse", "--format=%(trailers:key=Kriptik-Component,valueonly)", "main")
        return list(dict.fromkeys(name.strip() for name in log.splitlines() if name.strip()))


def _command_text(command: list[str] | str) -> str:
    return command if isinstance(command, str) else shlex.join(command)


class SandboxDevServers:
    """Components' dev servers in one sandbox, each in its own process group so a restart ends it whole.

    Args:
        sandbox: Where the servers run (the main-test, preview or take-over sandbox).
        ready_timeout_s: Bound on waiting for a server's ``ready_path`` to answer.
        poll_s: Pause between two readiness probes.
    """

    RUN_DIR = "/tmp/kriptik-dev"

    def __init__(self, sandbox: Sandbox, *, ready_timeout_s: float = 30.0, poll_s: float = 0.1) -> None:
        self.sandbox = sandbox
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self._ports: set[int] = set()

    async def stop(self, port: int) -> None:
        pid = f"{self.RUN_DIR}/{port}.pid"
        script = (
            f'[ -f {pid} ] || exit 0; g=$(cat {pid}); kill -TERM -"$g" 2>/dev/null; i=0; '
            f'while kill -0 -"$g" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; '
            f'kill -KILL -"$g" 2>/dev/null; rm -f {pid}; exit 0'
        )
        await self.sandbox.exec(script, timeout=30)
        self._ports.discard(port)

    async def start(self, component: Component) -> tuple[str | None, list[Finding]]:
        """Start one component's server; its URL once ``ready_path`` answers, or a finding."""
        server = component.dev_server
        if server is None:
            return None, []
        await self.stop(server.port)
        log = f"{self.RUN_DIR}/{server.port}.log"
        body = f"echo $$ > {self.RUN_DIR}/{server.port}.pid; {_command_text(server.command)}"
        script = f"mkdir -p {self.RUN_DIR}; setsid sh -c {shlex.quote(body)} > {log} 2>&1 < /dev/null &"
        await self.sandbox.exec(script, timeout=30)
        self._ports.add(server.port)
        url = await self.sandbox.expose(server.port)
        if await _answers(url + server.ready_path, self.ready_timeout_s, self.poll_s):
            return url, []
        tail = (await self.sandbox.exec(f"tail -n 20 {log} 2>/dev/null; true", timeout=10)).stdout[-1500:]
        message = f"dev server of {component.name} did not answer on port {server.port} within "
        message += f"{self.ready_timeout_s:.0f}s; log: {tail}"
        return None, [Finding(message=message, rule="merge.dev_server_not_ready")]

    async def restart(self, components: list[Component]) -> tuple[dict[str, str], list[Finding]]:
        wanted = {c.dev_server.port for c in components if c.dev_server is not None}
        for port in sorted(self._ports - wanted):
            await self.stop(port)
        urls: dict[str, str] = {}
        findings: list[Finding] = []
        for component in components:
            url, problems = await self.start(component)
            findings += problems
            if url is not None:
                urls[component.name] = url
        return urls, findings


async def _answers(url: str, timeout_s: float, poll_s: float) -> bool:
    """Whether ``url`` answers with anything below 500 before ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            try:
                if (await client.get(url)).status_code < 500:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(poll_s)


async def request_from_sandbox(
    sandbox: Sandbox, *, build_id: str, component: str, slot: str, message: str = ""
) -> MergeRequest:
    """A merge request for everything (but junk) in a slot's workspace, hashed as it is now."""
    paths = [i.path for i in await sandbox.list_files("**/*") if not i.is_dir and not is_junk(i.path)]
    blobs = await asyncio.gather(*(sandbox.read_file(p) for p in paths))
    files = {p: sha256_of(b) for p, b in zip(paths, blobs, strict=True)}
    return MergeRequest(build_id=build_id, component=component, slot=slot, files=files, message=message)
