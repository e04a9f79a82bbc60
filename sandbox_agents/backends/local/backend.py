"""The local backend: bubblewrap namespaces, cgroup limits, a tmpfs workspace per sandbox.

Measured on these hosts: a bwrap spawn costs 4–5 ms, an ``nsenter`` exec a few ms. The
sandbox runs as a dedicated non-root uid with every capability dropped, sees only /usr
(read-only), stub /etc files, its workspace and its home; its network is unshared unless
the spec allows it, and then goes through slirp4netns behind a filter (``network.py``).
State lives on disk (``state.json``), so ``from_id`` works from any process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Literal

from sandbox_agents.backends.base import InstallRequest, InstallResult, SandboxSpec, SnapshotRef, exec_request
from sandbox_agents.backends.config import LocalBackendConfig
from sandbox_agents.backends.install import CACHE_MOUNT
from sandbox_agents.backends.local import cgroup
from sandbox_agents.backends.local.cgroup import CgroupLayout, SandboxCgroups
from sandbox_agents.backends.local.launch import bwrap_argv, check_tools, launch, process_start_time, write_etc
from sandbox_agents.backends.local.network import DEFAULT_REGISTRIES, make_lifeline
from sandbox_agents.backends.local.packages import PackageStore
from sandbox_agents.backends.local.profiles import profile
from sandbox_agents.backends.local.sandbox import LocalSandbox
from sandbox_agents.backends.local.seccomp import filter_file
from sandbox_agents.backends.local.state import LocalState, default_root, host_state_dir, mount_tmpfs, unmount_under
from sandbox_agents.backends.local.uids import UidPool
from sandbox_agents.errors import BackendUnavailableError, ConfigError, SandboxNotFoundError, SnapshotError
from sandbox_agents.settings import get_settings

logger = logging.getLogger(__name__)


class LocalBackend:
    """Sandboxes on this host. Cheap to construct; checks its tools on first use."""

    name = "local"
    capabilities: frozenset[str] = frozenset({"exec", "isolation", "expose", "network"})

    def __init__(self, config: LocalBackendConfig | None = None) -> None:
        self.config = config or LocalBackendConfig()
        settings = get_settings()
        self.root = self.config.root or default_root(settings.home())
        first_uid = self.config.sandbox_uid or settings.kriptik_sandbox_uid
        if first_uid == 0:
            raise ConfigError("the sandbox uid must not be 0 (sandbox root would be host root)")
        self.uids = UidPool(
            first=first_uid,
            count=self.config.sandbox_uid_count,
            claims_dir=host_state_dir() / "uids",
            is_gone=self._claim_gone,
        )
        self._layout: CgroupLayout | None = None
        self._seccomp: Path | None = None
        self._unlimited_warned = False
        self._checked = False
        self._standby: list[LocalSandbox] = []
        self._refill: asyncio.Task[None] | None = None
        self._filling = asyncio.Lock()
        self._packages: PackageStore | None = None

    # --- set-up ------------------------------------------------------------------------

    def _ready(self) -> CgroupLayout:
        if not self._checked:
            check_tools()
            for path in (self.root, self.root / "snapshots"):
                path.mkdir(parents=True, exist_ok=True)
            for parent in [self.root, *self.root.parents]:
                if parent == Path("/"):
                    break
                if parent.stat().st_uid == os.geteuid():
                    os.chmod(parent, parent.stat().st_mode | 0o711)  # the sandbox uid must traverse
            self._layout = CgroupLayout.detect()
            self._seccomp = filter_file(host_state_dir())
            self._checked = True
        assert self._layout is not None
        return self._layout

    def _claim_gone(self, record: dict[str, object]) -> bool:
        """For the uid pool: True when the sandbox a claim names is over (terminated or dead)."""
        try:
            state = LocalState.load(Path(str(record["state"])))
        except FileNotFoundError:
            return True
        except (OSError, ValueError, KeyError):
            return False  # unreadable now: keep the claim rather than risk sharing its uid
        return state.terminated or not self._sandbox(state).alive()

    @property
    def seccomp_filter(self) -> Path:
        """The compiled seccomp filter every process of every sandbox runs under."""
        self._ready()
        assert self._seccomp is not None
        return self._seccomp

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    def _sandbox(self, state: LocalState) -> LocalSandbox:
        return LocalSandbox(self, state, SandboxCgroups(self._ready(), state.id))

    # --- the install phase -------------------------------------------------------------

    @property
    def packages(self) -> PackageStore:
        """The host's dependency trees and download caches (``packages.py``)."""
        if self._packages is None:
            registries = {k: tuple(v) for k, v in (self.config.registries or {}).items()}
            self._packages = PackageStore(
                host_state_dir() / "packages",
                max_bytes=self.config.package_cache_mb << 20,
                registries={**DEFAULT_REGISTRIES, **registries},
            )
        return self._packages

    def install_into(self, sandbox: LocalSandbox, request: InstallRequest) -> InstallResult:
        return self.packages.install(sandbox, request, self._installer)

    def _installer(self, spec: SandboxSpec, cache: Path) -> _Installer:
        """A fresh sandbox for one cold install, the download cache bound at ``CACHE_MOUNT``."""
        return _Installer(self._start(spec, self._limited_layout(), binds=((cache, CACHE_MOUNT),)))

    # --- the contract ------------------------------------------------------------------

    @property
    def unlimited(self) -> bool:
        """True when sandboxes run without cgroup limits (no writable cgroups, and the operator opted in)."""
        return self._ready().version == 0

    def _limited_layout(self) -> CgroupLayout:
        """The cgroup layout sandboxes start under; refuses when there is none, unless opted in.

        Raises:
            BackendUnavailableError: no writable memory/pids/cpu cgroups and no opt-in.
        """
        layout = self._ready()
        if layout.version != 0:
            return layout
        if not (self.config.allow_unlimited or os.environ.get(ALLOW_UNLIMITED_ENV) == "1"):
            raise BackendUnavailableError(
                f"no writable cgroup memory/pids/cpu controllers under {cgroup.CGROUP_ROOT}: the local backend "
                "will not start sandboxes without memory, process and CPU limits. Give it cgroups (run as root "
                f"with /sys/fs/cgroup writable), or opt into unlimited sandboxes with {ALLOW_UNLIMITED_ENV}=1 "
                "(or allow_unlimited in the local backend config).",
                backend="local",
            )
        if not self._unlimited_warned:
            self._unlimited_warned = True
            logger.error(
                "UNLIMITED SANDBOXES: no writable cgroups under %s and %s is set: sandboxes start with NO memory, "
                "process or CPU limits; one sandbox can exhaust this host",
                cgroup.CGROUP_ROOT,
                "allow_unlimited" if self.config.allow_unlimited else f"{ALLOW_UNLIMITED_ENV}=1",
            )
        return layout

    async def create(self, spec: SandboxSpec) -> LocalSandbox:
        """Start a sandbox (adopting a standby one when the pool has it).

        Raises:
            BackendUnavailableError: the host cannot limit sandboxes (no writable cgroups)
                and the operator did not opt into unlimited ones.
        """
        layout = self._limited_layout()
        while self._standby:
            sandbox = self._standby.pop()
            if await sandbox.adopt(spec):
                self._schedule_refill()
                return sandbox
        self._schedule_refill()
        return await asyncio.to_thread(self._start, spec, layout)

    def _start(self, spec: SandboxSpec, layout: CgroupLayout, binds: tuple[tuple[Path, str], ...] = ()) -> LocalSandbox:
        profile(spec.profile)  # its toolchain is on the host, or a clear error
        sandbox_id = f"sbx-{uuid.uuid4().hex[:12]}"
        base = self.root / sandbox_id
        uid = self.uids.claim(sandbox_id, base / "state.json")  # the sandbox's own host uid
        fs_dir, ctl_dir, etc_dir = base / "fs", base / "ctl", base / "etc"
        try:
            for path in (base, fs_dir, etc_dir):
                path.mkdir(mode=0o711, parents=True)  # bwrap, as the sandbox uid, reaches fs/ and etc/
            ctl_dir.mkdir(mode=0o700)  # the launcher's: never bound into the sandbox
            make_lifeline(ctl_dir)
            quota = mount_tmpfs(fs_dir, size_mb=spec.disk_mb, uid=uid)
            for name in ("workspace", "home"):
                (fs_dir / name).mkdir(mode=0o755)
                os.chown(fs_dir / name, uid, uid)
            write_etc(etc_dir, uid)
        except BaseException:
            unmount_under(base)
            shutil.rmtree(base, ignore_errors=True)
            self.uids.release(uid, sandbox_id)  # nothing ever ran as it
            raise
        now = time.time()
        state = LocalState(id=sandbox_id, spec=spec, uid=uid, quota=quota, ttl_deadline=now + spec.timeout_s)
        sandbox = LocalSandbox(self, state, SandboxCgroups(layout, sandbox_id))
        cgroups = sandbox.cgroups
        try:
            sandbox.write_deadline(force=True)
            cgroups.create(memory_mb=spec.memory_mb, max_pids=spec.max_pids, cpu=spec.cpu)
            argv = bwrap_argv(fs_dir=fs_dir, etc_dir=etc_dir, workdir=spec.workdir, binds=binds)
            state.launcher_pid, state.child_pid = launch(
                bwrap=argv,
                uid=uid,
                cgroup_files=cgroups.join_files(),
                ctl_dir=ctl_dir,
                deadline=sandbox.deadline_file,
                workdir=spec.workdir,
                seccomp=self.seccomp_filter,
            )
            state.child_start = process_start_time(state.child_pid)
            state.launcher_start = process_start_time(state.launcher_pid)
            state.save(base / "state.json")
            sandbox.start_network()
        except BaseException:
            sandbox.destroy_now()
            raise
        logger.debug("sandbox %s started (pid %s)", sandbox_id, state.child_pid)
        return sandbox

    async def from_id(self, sandbox_id: str) -> LocalSandbox:
        self._ready()
        if not sandbox_id or "/" in sandbox_id or sandbox_id.startswith("."):
            raise SandboxNotFoundError(f"invalid sandbox id {sandbox_id!r}", sandbox_id=sandbox_id)
        path = self.root / sandbox_id / "state.json"
        try:
            state = LocalState.load(path)
        except FileNotFoundError:
            raise SandboxNotFoundError(f"no local sandbox {sandbox_id}", sandbox_id=sandbox_id) from None
        return self._sandbox(state)

    async def list(self, tags: dict[str, str] | None = None) -> list[LocalSandbox]:
        """Running sandboxes whose tags include ``tags`` (standby ones are never listed)."""
        self._ready()
        wanted = tags or {}
        found = []
        for entry in sorted(self.root.glob("sbx-*/state.json")):
            try:
                state = LocalState.load(entry)
            except (OSError, ValueError):
                continue
            if state.terminated or state.spec.tags.get("kriptik.standby") == "1":
                continue
            if all(state.spec.tags.get(k) == v for k, v in wanted.items()):
                sandbox = self._sandbox(state)
                if sandbox.alive():
                    found.append(sandbox)
        return found

    async def restore(self, ref: SnapshotRef) -> LocalSandbox:
        archive = self.snapshots_dir / f"{ref.id}.tar.zst"
        if ref.backend != self.name or "/" in ref.id or not archive.exists():
            raise SandboxNotFoundError(f"no local snapshot {ref.id}")
        sandbox = await self.create(ref.spec.model_copy(update={"tags": {**ref.spec.tags}}))
        try:
            await asyncio.to_thread(sandbox.extract, archive)
        except BaseException as exc:
            await sandbox.terminate()
            raise SnapshotError(f"restore of {ref.id} failed: {exc}", sandbox_id=sandbox.id) from exc
        return sandbox

    async def close(self) -> None:
        """End the standby sandboxes this object started (assigned ones live on)."""
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refill
        standby, self._standby = self._standby, []
        for sandbox in standby:
            await sandbox.terminate()

    # --- standby pool ------------------------------------------------------------------

    async def warm(self) -> None:
        """Fill the standby pool now (``config.standby`` sandboxes), waiting until it is full."""
        layout = self._limited_layout()
        async with self._filling:  # one filler at a time: an explicit warm() and a refill never overfill
            while len(self._standby) < self.config.standby:
                self._standby.append(await asyncio.to_thread(self._start, _standby_spec(), layout))

    def _schedule_refill(self) -> None:
        if self.config.standby and (self._refill is None or self._refill.done()):
            self._refill = asyncio.get_running_loop().create_task(self._refill_later())

    async def _refill_later(self) -> None:
        # Starting a standby is ~10 ms of CPU (bwrap, namespaces, cgroups): on 2 cores it would slow
        # the first commands of the sandbox just adopted, the very latency the standby exists for.
        await asyncio.sleep(REFILL_DELAY_S)
        await self.warm()

    async def end_all(self) -> int:
        """End every running sandbox under this root, standby ones too (``kriptik down``); snapshots stay."""
        await self.close()
        ended = 0
        for entry in self.root.glob("sbx-*/state.json"):
            with contextlib.suppress(OSError, ValueError):
                state = LocalState.load(entry)
                if not state.terminated:
                    await asyncio.to_thread(self._sandbox(state).destroy_now)
                    ended += 1
        return ended

    async def purge(self) -> None:
        """End every sandbox under this root (standby ones too) and delete the root: for test and bench homes."""
        await self.close()
        for entry in self.root.glob("sbx-*/state.json"):
            with contextlib.suppress(OSError, ValueError):
                self._sandbox(LocalState.load(entry)).destroy_now()
        unmount_under(self.root)  # workspaces of sandboxes whose starter died before writing their state
        shutil.rmtree(self.root, ignore_errors=True)

    def sweep(self) -> int:
        """End standby sandboxes left behind by processes that died (their own loop ends them too).

        Also takes back host uids whose sandboxes are over (of any state home on this host).
        """
        ended = 0
        for entry in self.root.glob("sbx-*/state.json"):
            with contextlib.suppress(OSError, ValueError):
                state = LocalState.load(entry)
                sandbox = self._sandbox(state)
                if state.terminated or not sandbox.alive():
                    sandbox.destroy_now()
                    ended += 1
        self.uids.reclaim_stale()
        return ended


#: Set to 1 to start sandboxes without cgroup limits on a host that has none (fail closed otherwise).
ALLOW_UNLIMITED_ENV = "KRIPTIK_ALLOW_UNLIMITED_SANDBOXES"

SandboxLimits = Literal["cgroups", "unlimited", "refused"]


def host_sandbox_limits(*, allow_unlimited: bool = False) -> SandboxLimits:
    """What limits local sandboxes started on this host get, for status pages.

    ``cgroups``: memory, pids and cpu limits; ``unlimited``: the host has no writable cgroups and
    the operator opted in (``allow_unlimited`` or ``KRIPTIK_ALLOW_UNLIMITED_SANDBOXES=1``);
    ``refused``: no writable cgroups and no opt-in, so the backend refuses to start sandboxes.
    """
    if CgroupLayout.detect().version != 0:
        return "cgroups"
    if allow_unlimited or os.environ.get(ALLOW_UNLIMITED_ENV) == "1":
        return "unlimited"
    return "refused"


#: Standby sandboxes expire on their own if nobody adopts them (an owner that died).
STANDBY_TTL_S = 120.0
REFILL_DELAY_S = 0.25
"""How long after an adoption the standby refill starts (an explicit ``warm()`` fills at once)."""


def _standby_spec() -> SandboxSpec:
    return SandboxSpec(timeout_s=STANDBY_TTL_S, tags={"kriptik.standby": "1"}, memory_mb=4096, max_pids=1024)


def purge_home(home: Path) -> None:
    """End every local sandbox a (test, bench or demo) state home left behind, then delete the home."""
    root = default_root(home)
    if root.exists():
        asyncio.run(LocalBackend(LocalBackendConfig(root=root)).purge())
    shutil.rmtree(home, ignore_errors=True)


class _Installer:
    """An installer sandbox as ``PackageStore`` uses it: host-side writes, one command, then gone."""

    def __init__(self, sandbox: LocalSandbox) -> None:
        self._sandbox = sandbox

    @property
    def uid(self) -> int:
        return self._sandbox.uid

    @property
    def workspace(self) -> Path:
        return self._sandbox.workspace

    def write_host(self, rel: str, data: bytes) -> None:
        self._sandbox.write_host(rel, data)

    def read_host(self, rel: str, *, cap: int) -> bytes:
        return self._sandbox.read_host(rel, cap=cap)

    def run(self, command: str, *, cwd: str, timeout_s: float) -> tuple[int, str]:
        request = exec_request(command, cwd, None, timeout_s, None)
        out = self._sandbox.run_sync(request)
        text = out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")
        if out.timed_out:
            return 124, text + f"\n[timed out after {timeout_s}s]"
        return (out.exit_code if out.exit_code is not None else -1), text

    def close(self) -> None:
        self._sandbox.destroy_now()
