"""The merge gate's concrete ports over a sandbox: the main repo as git, dev servers, criteria, requests.

:class:`GitMainRepo` keeps ``main`` as a git repository in the main-test sandbox (git runs
inside the sandbox); :class:`SandboxDevServers` (re)starts components' dev servers there, each
in its own process group; :func:`sandbox_satisfy` checks success criteria against them; and
:func:`request_from_sandbox` hashes a slot's workspace into a :class:`MergeRequest`. Any
:class:`~sandbox_agents.backends.base.Sandbox` will do, so the integration tests run them on
the local backend.
"""

from __future__ import annotations

import asyncio
import io
import shlex
import tarfile
import time
import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from coordinator.contracts import Component, IntentContract
from coordinator.intent import SatisfactionReport, check_satisfaction, lock
from coordinator.merge.models import JUNK_DIRS, JUNK_SUFFIXES, MergeRequest, Satisfy, is_junk, sha256_of
from sandbox_agents.backends.base import Sandbox
from sandbox_agents.errors import InvalidInputError, SandboxError
from sandbox_agents.verifiers.models import Finding


def sandbox_satisfy(sandbox: Any, ui_checker: Any = None) -> Satisfy:
    """The default criteria port: :func:`check_satisfaction` over a :class:`SandboxCriterionRunner`."""
    from coordinator.intent import SandboxCriterionRunner

    async def satisfy(contract: IntentContract, urls: Mapping[str, str]) -> SatisfactionReport:
        bases = dict(urls)
        bases.setdefault("", next(iter(urls.values()), "http://127.0.0.1:9"))  # criteria naming no component
        runner = SandboxCriterionRunner(sandbox, bases, ui_checker)
        return await check_satisfaction(lock(contract), runner)

    return satisfy


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
_TAR = ".git/kriptik-main-{}.tar"
"""One archive per ``tree()`` call: concurrent callers (tournament candidates seeding) must not share it."""


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
        archive = _TAR.format(uuid.uuid4().hex)
        await self._git("archive", "--format=tar", "-o", archive, "main")
        try:
            blob = await self.sandbox.read_file(archive)
        finally:
            await self.sandbox.remove(archive)
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
