"""The merge gate's ports over the main-test sandbox: the tree's copy, dev servers, criteria, requests.

:class:`SandboxMainCopy` keeps a plain copy of ``main``'s tree in the main-test sandbox, where
candidate code runs; it holds no ``.git`` (the repository is on the gate's host:
:class:`~coordinator.merge.host_repo.HostGitRepo`), and a rejection replaces the whole sandbox
(:class:`MainTestSandbox` lets every port keep one object across that). :class:`SandboxDevServers`
(re)starts components' dev servers there, each in its own process group;
:func:`sandbox_satisfy` checks success criteria against them; and :func:`request_from_sandbox`
hashes what ``git add`` would take of a slot's workspace into a :class:`MergeRequest`. Any
:class:`~sandbox_agents.backends.base.Sandbox` will do, so the integration tests run them on
the local backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx

from coordinator.contracts import Component, IntentContract, primary_component
from coordinator.intent import SatisfactionReport, check_satisfaction, lock
from coordinator.merge.ignore import ignored_paths, is_ignore_file
from coordinator.merge.models import MergeRequest, Satisfy, is_junk, sha256_of
from coordinator.merge.router import router_argv
from coordinator.merge.screen import CONTROL_FILES, SUBMODULES_FILE, is_git_metadata_name
from sandbox_agents.backends.base import (
    ExecChunk,
    ExecResult,
    FileInfo,
    InstallRequest,
    InstallResult,
    Sandbox,
    SandboxSpec,
    SandboxStatus,
    SnapshotRef,
)
from sandbox_agents.errors import SandboxError, SandboxPathError
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


class MainTestSandbox:
    """The main-test sandbox as the gate's ports hold it: forwards to the current sandbox, which a reset swaps.

    The dev servers, the swarm and the criteria keep this one object; after :meth:`swap` they
    reach the fresh sandbox.
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self.current = sandbox

    def swap(self, sandbox: Sandbox) -> None:
        self.current = sandbox

    @property
    def id(self) -> str:
        return self.current.id

    @property
    def spec(self) -> SandboxSpec:
        return self.current.spec

    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:
        return await self.current.exec(command, cwd=cwd, env=env, timeout=timeout, stdin=stdin)

    def exec_stream(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[ExecChunk]:
        return self.current.exec_stream(command, cwd=cwd, env=env, timeout=timeout)

    async def write_file(self, path: str, data: bytes | str, *, mode: int | None = None) -> None:
        await self.current.write_file(path, data, mode=mode)

    async def read_file(self, path: str) -> bytes:
        return await self.current.read_file(path)

    async def list_files(self, pattern: str = "**/*") -> list[FileInfo]:
        return await self.current.list_files(pattern)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await self.current.remove(path, recursive=recursive)

    async def snapshot(self) -> SnapshotRef:
        return await self.current.snapshot()

    async def expose(self, port: int) -> str:
        return await self.current.expose(port)

    async def install(self, request: InstallRequest) -> InstallResult:
        return await self.current.install(request)

    async def keepalive(self) -> None:
        await self.current.keepalive()

    async def status(self) -> SandboxStatus:
        return await self.current.status()

    async def terminate(self) -> None:
        await self.current.terminate()


#: Makes a brand-new main-test sandbox (the old one and every process in it gone); returns it.
Renew = Callable[[], Awaitable[Sandbox]]

# Creates each symlink given as (target, path) argument pairs, with its parent directories.
_LINK_SCRIPT = (
    'while [ "$#" -gt 1 ]; do mkdir -p -- "$(dirname -- "$2")" && ln -sfn -- "$1" "$2" || exit 1; shift 2; done'
)


class SandboxMainCopy:
    """``main``'s tree as plain files in the main-test sandbox: no ``.git``, which stays on the gate's host.

    Candidate code runs here (dev servers, the swarm, command criteria), so after a rejection
    nothing of this sandbox is trusted: :meth:`reset` asks ``renew`` for a brand-new sandbox
    (which ends every process the candidate left, ``setsid`` daemons included, and every
    file it wrote anywhere, home and ``/tmp`` included) and writes ``main`` into it.

    Args:
        sandbox: The main-test sandbox; :meth:`reset` swaps the fresh one in.
        renew: Makes the fresh sandbox.
        concurrency: Files written at once.
    """

    def __init__(self, sandbox: MainTestSandbox, renew: Renew, *, concurrency: int = 16) -> None:
        self.sandbox = sandbox
        self.renew = renew
        self._limit = asyncio.Semaphore(concurrency)
        self._links: set[str] = set()
        self._controls: set[str] = set()

    async def apply(self, writes: Mapping[str, bytes], links: Mapping[str, str], deletes: Sequence[str]) -> None:
        """Write, link and delete as the merge branch does (the copy holds ``main`` before)."""
        for path in [*deletes, *(p for p in writes if p in self._links)]:
            with contextlib.suppress(FileNotFoundError):
                await self.sandbox.remove(path)
            self._links.discard(path)

        async def write(path: str, data: bytes) -> None:
            async with self._limit:
                await self.sandbox.write_file(path, data)

        await asyncio.gather(*(write(p, d) for p, d in writes.items()))
        if links:
            pairs = [arg for path, target in sorted(links.items()) for arg in (target, path)]
            result = await self.sandbox.exec(["sh", "-c", _LINK_SCRIPT, "sh", *pairs], timeout=60)
            if result.exit_code != 0:
                raise SandboxError(f"linking {len(links)} symlink(s) failed: {result.stderr[-500:]}")
            self._links.update(links)
        self._controls -= set(deletes)
        self._controls |= {p for p in (*writes, *links) if posixpath.basename(p).lower() in _GIT_NAMES}

    async def reset(self, files: Mapping[str, bytes], links: Mapping[str, str]) -> None:
        """A fresh sandbox (from ``renew``) holding exactly ``files`` and ``links``."""
        self.sandbox.swap(await self.renew())
        self._links, self._controls = set(), set()
        await self.apply(files, links, [])

    async def drift(self, files: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """How the copy differs from ``files`` (path → sha256 of ``main``'s regular files) now that checks ran.

        Returns:
            Paths of ``main`` whose file checks changed or removed, and files checks added that are
            not junk (installed dependencies, build output and caches stay, as ``git clean`` without
            ``-x`` would leave them); ``main``'s symlinks are not looked at.
        """
        found = await self.sandbox.list_files("**/*")
        present = {f.path for f in found if not f.is_dir and f.path not in self._links}

        async def read(path: str) -> bytes:
            async with self._limit:
                return await self.sandbox.read_file(path)

        kept = sorted(p for p in files if p in present)
        blobs = await asyncio.gather(*(read(p) for p in kept))
        stale = {p for p, data in zip(kept, blobs, strict=True) if sha256_of(data) != files[p]}
        stale |= {p for p in files if p not in present}
        return sorted(stale), sorted(p for p in present if p not in files and not is_junk(p))

    async def strays(self) -> list[str]:
        """Git metadata (``.git`` at any depth) and git rule files in the copy that the tree does not hold."""
        found = await self.sandbox.list_files("**/*")
        return sorted(
            f.path
            for f in found
            if not f.is_dir
            and f.path not in self._controls
            and (
                any(is_git_metadata_name(part) for part in f.path.split("/"))
                or posixpath.basename(f.path).lower() in _GIT_NAMES
            )
        )


_GIT_NAMES = frozenset({*CONTROL_FILES, SUBMODULES_FILE})


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

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        ready_timeout_s: float = 30.0,
        poll_s: float = 0.05,
        contract: IntentContract | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self.contract = contract
        """With an ``origin``, the router (``router.py``) runs in front of the servers: the page's URL is its."""
        self._ports: set[int] = set()

    async def stop(self, port: int) -> None:
        pid = f"{self.RUN_DIR}/{port}.pid"
        script = (
            f'[ -f {pid} ] || exit 0; g=$(cat {pid}); kill -TERM -"$g" 2>/dev/null; i=0; '
            f'while kill -0 -"$g" 2>/dev/null && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done; '
            f'kill -KILL -"$g" 2>/dev/null; rm -f {pid}; exit 0'
        )
        await self.sandbox.exec(script, timeout=30)
        self._ports.discard(port)

    async def start(self, component: Component) -> tuple[str | None, list[Finding]]:
        """Start one component's server; its URL once ``ready_path`` answers, or a finding."""
        server = component.dev_server
        if server is None:
            return None, []
        return await self._launch(component.name, server.port, _command_text(server.command), server.ready_path)

    async def _launch(self, name: str, port: int, command: str, ready_path: str) -> tuple[str | None, list[Finding]]:
        await self.stop(port)
        log = f"{self.RUN_DIR}/{port}.log"
        body = f"echo $$ > {self.RUN_DIR}/{port}.pid; {command}"
        script = f"mkdir -p {self.RUN_DIR}; setsid sh -c {shlex.quote(body)} > {log} 2>&1 < /dev/null &"
        await self.sandbox.exec(script, timeout=30)
        self._ports.add(port)
        url = await self.sandbox.expose(port)
        if await _answers(url + ready_path, self.ready_timeout_s, self.poll_s):
            return url, []
        tail = (await self.sandbox.exec(f"tail -n 20 {log} 2>/dev/null; true", timeout=10)).stdout[-1500:]
        message = f"dev server of {name} did not answer on port {port} within "
        message += f"{self.ready_timeout_s:.0f}s; log: {tail}"
        return None, [Finding(message=message, rule="merge.dev_server_not_ready")]

    async def _route(self, urls: dict[str, str]) -> list[Finding]:
        """Put the origin router in front of the page (started once; it finds the servers by port)."""
        contract = self.contract
        origin = contract.origin if contract is not None else None
        page = primary_component(contract) if contract is not None else None
        if contract is None or origin is None or page is None or page.dev_server is None or page.name not in urls:
            return []
        argv = router_argv(contract, origin)
        if argv is None:
            return []
        if origin.port in self._ports and await self._alive(origin.port):
            urls[page.name] = await self.sandbox.expose(origin.port)
            return []
        url, problems = await self._launch(
            "the origin router", origin.port, shlex.join(argv), page.dev_server.ready_path
        )
        if url is not None:
            urls[page.name] = url
        return problems

    async def restart(
        self, components: list[Component], *, keep_hot: bool = False
    ) -> tuple[dict[str, str], list[Finding]]:
        """Install each component's dependencies, then (re)start the dev servers of those that have one.

        Args:
            keep_hot: Leave a running ``hot_reload`` server as it is when its dependencies did not
                change (the preview: the server picks up the new files itself).
        """
        wanted = {c.dev_server.port for c in components if c.dev_server is not None}
        if self.contract is not None and self.contract.origin is not None:
            wanted.add(self.contract.origin.port)
        for port in sorted(self._ports - wanted):
            await self.stop(port)
        urls: dict[str, str] = {}
        findings: list[Finding] = []
        for component in components:
            problems, changed = await install_packages(self.sandbox, component)
            findings += problems
            if problems or component.dev_server is None:
                continue
            if keep_hot and component.dev_server.hot_reload and not changed and await self.running(component):
                self._ports.add(component.dev_server.port)
                urls[component.name] = await self.sandbox.expose(component.dev_server.port)
                continue
            url, problems = await self.start(component)
            findings += problems
            if url is not None:
                urls[component.name] = url
        findings += await self._route(urls)
        return urls, findings

    async def running(self, component: Component) -> bool:
        """Whether the component's server (its process group) is alive."""
        return component.dev_server is not None and await self._alive(component.dev_server.port)

    async def _alive(self, port: int) -> bool:
        pid = f"{self.RUN_DIR}/{port}.pid"
        result = await self.sandbox.exec(f'[ -f {pid} ] && kill -0 -"$(cat {pid})" 2>/dev/null', timeout=10)
        return result.exit_code == 0


async def install_packages(sandbox: Sandbox, component: Component) -> tuple[list[Finding], bool]:
    """The install phase of one component in ``sandbox``: findings for what failed, and whether any tree changed.

    A missing manifest or a failed install is a finding the team can fix (an ``error`` naming the
    manifest and the installer's output), never an exception that ends the build.
    """
    findings: list[Finding] = []
    changed = False
    for packages in component.packages:
        request = InstallRequest(manager=packages.manager, dir=packages.dir, timeout_s=packages.timeout_s)
        where = f"{packages.dir}/" if packages.dir not in ("", ".") else ""
        try:
            result = await sandbox.install(request)
        except SandboxPathError as exc:
            findings.append(Finding(message=f"install of {component.name}: {exc}", rule="install.failed"))
            continue
        changed = changed or result.changed
        if not result.ok:
            message = f"install of {component.name} ({packages.manager} in {where or './'}) failed:\n{result.output}"
            findings.append(Finding(message=message[:4000], rule="install.failed", file=where or None))
    return findings, changed


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
    """A merge request for what ``git add`` would take of a slot's workspace, hashed as it is now.

    Junk is left out, and so is whatever the workspace's own ``.gitignore`` files ignore (the data
    a component's checks write next to its code); symlinks go by target.
    """
    links = {p: t for p, t in (await _symlinks(sandbox)).items() if not is_junk(p)}
    paths = [
        i.path for i in await sandbox.list_files("**/*") if not i.is_dir and not is_junk(i.path) and i.path not in links
    ]
    rules = [p for p in paths if is_ignore_file(p)]
    ignored = await ignored_paths([*paths, *links], dict(zip(rules, await _read_all(sandbox, rules), strict=True)))
    links = {p: t for p, t in links.items() if p not in ignored}
    paths = [p for p in paths if p not in ignored]
    blobs = await _read_all(sandbox, paths)
    files = {p: sha256_of(b) for p, b in zip(paths, blobs, strict=True)}
    return MergeRequest(build_id=build_id, component=component, slot=slot, files=files, links=links, message=message)


async def _read_all(sandbox: Sandbox, paths: Sequence[str]) -> list[bytes]:
    return list(await asyncio.gather(*(sandbox.read_file(p) for p in paths)))


async def _symlinks(sandbox: Sandbox) -> dict[str, str]:
    """Path → target of every symlink in the workspace (``list_files`` does not tell them apart)."""
    result = await sandbox.exec(["find", ".", "-type", "l", "-printf", "%P\\0%l\\0"], timeout=60)
    if result.exit_code != 0:  # a backend without find (the fake): it has no symlinks either
        return {}
    parts = result.stdout.split("\0")
    return dict(zip(parts[0::2], parts[1::2], strict=False))
