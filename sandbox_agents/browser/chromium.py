"""Chromium for pages written by agents: not root, its own sandbox on, one origin reachable.

Every browser of the system (the visual verifier, UI criteria, preview screenshots)
launches through :class:`Chromium`. Playwright starts a small wrapper script in place of
Chromium; as root it joins a network namespace made for this browser
(:mod:`~sandbox_agents.browser.netns`), hands Playwright's profile directory to a host uid
claimed for this browser alone, then becomes that uid for good (no capabilities, no
groups, ``no_new_privs``, a clean environment) and execs Chromium with Chromium's own
sandbox on (user namespaces + seccomp-bpf for renderers; they work for an unprivileged uid
on these hosts). Playwright speaks to it over pipes (``--remote-debugging-pipe``), which a
network namespace does not cut.

In the namespace there is one socket: the :class:`~sandbox_agents.browser.socks.SocksGate`
that Chromium must use for every connection, loopback included. It connects from the host
only to origins granted for the duration of a check: :meth:`Chromium.new_context` grants
the URL it is given while the returned context is open. A page's script reaching for
Redis, Ray, the API or another build's preview on ``127.0.0.1`` is refused; a process that
ignored the proxy would find no route at all.

When the browser closes, every process of its uid is killed and the uid, the namespace,
the profile and the home are given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from sandbox_agents.backends.local.state import host_state_dir
from sandbox_agents.backends.local.uids import UidPool
from sandbox_agents.browser.netns import BrowserNetns
from sandbox_agents.browser.socks import SocksGate, origin_of
from sandbox_agents.errors import BackendUnavailableError

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Playwright

logger = logging.getLogger(__name__)

CHROMIUM_PATH = "/usr/bin/chromium"
#: Measured on these hosts (FACTS.md). No ``--no-sandbox``: Chromium's own sandbox stays on.
CHROMIUM_ARGS = (
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
#: The gate's port inside the browser's namespace (nothing else listens there).
GATE_PORT = 1080
#: Not root and no namespace: run Chromium as the current user on the host's network anyway.
ALLOW_UNISOLATED_ENV = "KRIPTIK_ALLOW_UNISOLATED_BROWSER"
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: Per-browser directories (wrapper, pid file, home) are ``<tmp>/kriptik-browser-<owner pid>-*``.
_WORKDIR_PREFIX = "kriptik-browser-"


class BrowserConfig(BaseModel):
    """How the browser runs."""

    model_config = ConfigDict(extra="forbid")

    executable: str = CHROMIUM_PATH
    """Chromium binary (Debian's ``chromium``; ``playwright install`` cannot download here)."""
    args: tuple[str, ...] = CHROMIUM_ARGS
    """Extra Chromium switches; the proxy switches are added, ``--no-sandbox`` is refused."""
    uid_first: int = Field(default=60000, ge=1)
    """First host uid of the browsers' range (each running browser holds one of its own);
    keep it apart from the sandboxes' range (61000-61999 by default)."""
    uid_count: int = Field(default=1000, ge=1, le=1_000_000)
    """Host uids in the range: this bounds the browsers running at once on a host."""
    allow_unisolated: bool = False
    """When not root (no uid of its own, no namespace): run Chromium as the current user with
    its own sandbox on the host's network (also ``KRIPTIK_ALLOW_UNISOLATED_BROWSER=1``);
    otherwise the browser refuses to start."""
    close_timeout_s: float = Field(default=10.0, gt=0)
    """Bound on a graceful close; its processes are killed after it either way."""


class Chromium:
    """One headless Chromium, launched on first use and shared by the checks of a process.

    Launch costs ~0.3 s and a process; a swarm that verifies continuously keeps one warm.
    Pages reach only what :meth:`new_context` granted, for as long as the context is open.

    Args:
        config: How the browser runs; the defaults are the isolated setup described above.
    """

    def __init__(self, config: BrowserConfig | None = None) -> None:
        self.config = config or BrowserConfig()
        if "--no-sandbox" in self.config.args:
            raise ValueError("Chromium's own sandbox stays on: drop --no-sandbox from the browser args")
        self._playwright: Playwright | None = None
        self._session: _Session | None = None
        self._lock: asyncio.Lock | None = None

    async def browser(self) -> Browser:
        """The running browser, launching it when needed. Its pages reach only granted origins."""
        return (await self._running()).browser

    async def new_context(self, url: str, **options: Any) -> BrowserContext:
        """A browser context whose pages may reach ``url``'s origin until the context closes.

        Args:
            url: The page to check; its ``host:port`` becomes reachable for this context.
            options: Passed to Playwright's ``Browser.new_context`` (viewport, …).
        """
        session = await self._running()
        release = session.grant(url)
        try:
            context = await session.browser.new_context(**options)
        except BaseException:
            release()
            raise
        context.once("close", lambda _context: release())
        return context

    @property
    def uid(self) -> int | None:
        """Host uid the running browser runs as (None before launch or when unisolated)."""
        return None if self._session is None else self._session.uid

    @property
    def pid(self) -> int | None:
        """Pid of the running browser's main process (None before launch)."""
        return None if self._session is None else self._session.pid()

    @property
    def refused(self) -> list[tuple[str, int]]:
        """``(host, port)`` the running browser's pages tried to reach and were refused."""
        return [] if self._session is None or self._session.gate is None else list(self._session.gate.refused)

    async def close(self) -> None:
        """Close the browser, kill what is left of it and give back what it held; safe to call twice."""
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            session, self._session = self._session, None
            playwright, self._playwright = self._playwright, None
            try:
                if session is not None:
                    await session.close()
            finally:
                if playwright is not None:
                    await playwright.stop()

    async def __aenter__(self) -> Chromium:
        await self.browser()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _running(self) -> _Session:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self._session is not None and not self._session.browser.is_connected():
                stale, self._session = self._session, None
                await stale.close()
            if self._session is None:
                if self._playwright is None:
                    from playwright.async_api import async_playwright

                    self._playwright = await async_playwright().start()
                self._session = await _Session.launch(self.config, self._playwright)
            return self._session


class _Session:
    """One launched browser and what it holds: uid, namespace, gate, directories."""

    def __init__(self, config: BrowserConfig) -> None:
        self.config = config
        self.name = f"browser-{os.getpid()}-{id(self):x}"
        self.uid: int | None = None
        self.pool: UidPool | None = None
        self.netns: BrowserNetns | None = None
        self.gate: SocksGate | None = None
        self.workdir: Path | None = None
        self.home: Path | None = None
        self._browser: Browser | None = None

    @property
    def browser(self) -> Browser:
        assert self._browser is not None, "launched before use"
        return self._browser

    @classmethod
    async def launch(cls, config: BrowserConfig, playwright: Playwright) -> _Session:
        session = cls(config)
        try:
            await session._launch(playwright)
        except BaseException:
            await session.close()
            raise
        return session

    async def _launch(self, playwright: Playwright) -> None:
        config = self.config
        if os.geteuid() != 0:
            if not (config.allow_unisolated or os.environ.get(ALLOW_UNISOLATED_ENV) == "1"):
                raise BackendUnavailableError(
                    "the browser runs isolated only when started as root (a uid of its own, a network "
                    f"namespace); set {ALLOW_UNISOLATED_ENV}=1 to run it as this user on the host's network",
                    backend="browser",
                )
            logger.error("UNISOLATED BROWSER: Chromium runs as uid %d on the host's network", os.geteuid())
            self._browser = await playwright.chromium.launch(
                executable_path=config.executable, args=list(config.args), chromium_sandbox=True, headless=True
            )
            return
        self.pool = UidPool(
            first=config.uid_first,
            count=config.uid_count,
            claims_dir=host_state_dir() / "browser-uids",
            is_gone=_owner_gone,
        )
        # What browsers of owners that died (an actor killed without close) left behind.
        await asyncio.to_thread(self.pool.reclaim_stale)
        await asyncio.to_thread(_remove_orphaned_workdirs)
        # The claim's "state" is our /proc entry: it exists exactly while the claimer lives.
        self.uid = uid = await asyncio.to_thread(self.pool.claim, self.name, Path(f"/proc/{os.getpid()}"))
        self.workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-"))
        self.home = self.workdir / "home"
        self.home.mkdir(mode=0o700)
        os.chown(self.home, uid, uid)
        self.netns = await asyncio.to_thread(BrowserNetns.create, GATE_PORT)
        self.gate = SocksGate(self.netns.listener)
        await self.gate.start()
        wrapper = self.workdir / "chromium"
        wrapper.write_text(_wrapper_script(config.executable, uid, self.home, self.netns.path, self.workdir / "pid"))
        wrapper.chmod(0o700)
        self._browser = await playwright.chromium.launch(
            executable_path=str(wrapper),
            args=[*config.args, f"--proxy-server=socks5://127.0.0.1:{GATE_PORT}", "--proxy-bypass-list=<-loopback>"],
            chromium_sandbox=True,
            headless=True,
            env={"PATH": _PATH},
        )
        logger.debug("browser %s: uid %d, pid %s", self.name, uid, self.pid())

    def grant(self, url: str) -> Any:
        """Make ``url``'s origin reachable; returns its release."""
        origin = origin_of(url)
        if self.gate is None:
            return lambda: None  # unisolated: the host's network, nothing to grant
        return self.gate.grant(origin)

    def pid(self) -> int | None:
        if self.workdir is None:
            return None
        try:
            return int((self.workdir / "pid").read_text())
        except (OSError, ValueError):
            return None

    async def close(self) -> None:
        """Close the browser, kill every process of its uid, give back uid, namespace and files."""
        browser, self._browser = self._browser, None
        try:
            if browser is not None:
                try:
                    await asyncio.wait_for(browser.close(), self.config.close_timeout_s)
                except Exception as exc:  # noqa: BLE001 - its processes are killed below either way
                    logger.warning("browser %s did not close cleanly: %r", self.name, exc)
        finally:
            if self.gate is not None:
                await self.gate.close()
            await asyncio.to_thread(self._release)

    def _release(self) -> None:
        left = kill_uid(self.uid) if self.uid is not None else []
        if left:
            logger.error("browser %s: processes %s of uid %s outlived SIGKILL", self.name, left, self.uid)
        if self.netns is not None:
            self.netns.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.pool is not None and self.uid is not None and not left:
            self.pool.release(self.uid, self.name)


def _wrapper_script(executable: str, uid: int, home: Path, netns: str, pidfile: Path) -> str:
    """What Playwright runs as Chromium: as root until the last ``exec``, then the browser's uid.

    Every step ``exec``s, so the pid Playwright holds (and writes to ``pidfile``) is Chromium's.
    """
    q = shlex.quote
    env = [f"HOME={home}", f"PATH={_PATH}", "LANG=C.UTF-8", f"XDG_CONFIG_HOME={home}/.config"]
    env += [f"XDG_CACHE_HOME={home}/.cache", "TZ=UTC"]
    return f"""#!/bin/sh
# Written by sandbox_agents.browser for one browser; Playwright runs it in place of Chromium.
set -eu
echo $$ > {q(str(pidfile))}
for arg in "$@"; do
  case "$arg" in --user-data-dir=*) chown -- {uid}:{uid} "${{arg#--user-data-dir=}}" ;; esac
done
exec nsenter --net={q(netns)} -- \\
  setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all --bounding-set=-all \\
    --no-new-privs --pdeathsig=KILL -- \\
  env -i {" ".join(q(e) for e in env)} {q(executable)} "$@"
"""


def processes_of(uid: int) -> list[int]:
    """Pids of the host's live processes (zombies left out) whose owner is ``uid``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                state = Path(entry.path, "stat").read_text().rpartition(")")[2].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(entry.name))
    return found


def kill_uid(uid: int, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL every process of ``uid`` (a uid this browser alone holds) until none is left.

    Returns:
        The pids still there after ``timeout_s`` (empty when all are gone).
    """
    deadline = time.monotonic() + timeout_s
    while pids := processes_of(uid):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return pids
        time.sleep(0.01)
    return []


def _remove_orphaned_workdirs() -> None:
    """Remove the directories of browsers whose owning process died without closing them."""
    for path in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*-*"):
        owner = path.name[len(_WORKDIR_PREFIX) :].partition("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _owner_gone(record: dict[str, object]) -> bool:
    return not Path(str(record.get("state"))).exists()
