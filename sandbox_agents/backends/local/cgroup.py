"""Per-sandbox cgroups: memory, pids and cpu limits, CPU accounting, and tree kills.

bwrap does no cgroups itself, so the launcher joins the sandbox's cgroups before it execs
bwrap, and every command joins them before it enters the sandbox. Each command also gets
its own pids sub-group, so that a timeout kills exactly its process tree, even the
processes that called ``setsid``. cgroup v1 (the hosts measured here mount memory, pids,
cpu and cpuacct as v1) and v2 are both handled. On a host with neither the backend fails
closed: it refuses to start sandboxes unless the operator opted into unlimited ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP = "kriptik"


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


@dataclass(frozen=True)
class CgroupLayout:
    """Where this host keeps each controller: ``v1`` per-controller dirs, ``v2`` one dir, or none."""

    version: int  # 1, 2 or 0 (none usable)
    memory: Path | None = None
    pids: Path | None = None
    cpu: Path | None = None
    cpuacct: Path | None = None
    unified: Path | None = None

    @classmethod
    def detect(cls) -> CgroupLayout:
        v1 = {name: CGROUP_ROOT / name for name in ("memory", "pids", "cpu", "cpuacct")}
        if all(_writable(p) and (p / "cgroup.procs").exists() for p in v1.values()):
            return cls(version=1, **{k: v / GROUP for k, v in v1.items()})
        if (CGROUP_ROOT / "cgroup.controllers").exists() and _writable(CGROUP_ROOT):
            controllers = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
            if {"memory", "pids", "cpu"} <= set(controllers):
                return cls(version=2, unified=CGROUP_ROOT / GROUP)
        return cls(version=0)


class SandboxCgroups:
    """The cgroups of one sandbox (created by ``create``, found again by id after a restart)."""

    def __init__(self, layout: CgroupLayout, sandbox_id: str) -> None:
        self.layout = layout
        self.sandbox_id = sandbox_id

    # --- paths -------------------------------------------------------------------------

    def _dirs(self) -> list[Path]:
        lay = self.layout
        if lay.version == 1:
            return [p / self.sandbox_id for p in (lay.memory, lay.pids, lay.cpu, lay.cpuacct) if p]
        if lay.version == 2 and lay.unified:
            return [lay.unified / self.sandbox_id]
        return []

    def _exec_parent(self) -> Path | None:
        if self.layout.version == 1 and self.layout.pids:
            return self.layout.pids / self.sandbox_id
        if self.layout.version == 2 and self.layout.unified:
            return self.layout.unified / self.sandbox_id
        return None

    def join_files(self, exec_name: str | None = None) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid into to join this sandbox.

        With ``exec_name`` the pids group is the command's own sub-group (for tree kills).
        """
        lay = self.layout
        if lay.version == 1:
            files = [str(p / self.sandbox_id / "cgroup.procs") for p in (lay.memory, lay.cpu, lay.cpuacct) if p]
            pids_dir = lay.pids / self.sandbox_id if lay.pids else None
            if pids_dir is not None:
                target = pids_dir / exec_name if exec_name else pids_dir / "init"
                files.append(str(target / "cgroup.procs"))
            return files
        if lay.version == 2 and lay.unified:
            leaf = exec_name or "init"
            return [str(lay.unified / self.sandbox_id / leaf / "cgroup.procs")]
        return []

    # --- lifecycle ---------------------------------------------------------------------

    def create(self, *, memory_mb: int, max_pids: int, cpu: float) -> None:
        """Make the groups and set the limits."""
        lay = self.layout
        if lay.version == 0:
            return
        if lay.version == 2 and lay.unified:
            lay.unified.mkdir(exist_ok=True)
            _enable_v2_controllers(lay.unified.parent)
            _enable_v2_controllers(lay.unified)
        for path in self._dirs():
            path.mkdir(parents=True, exist_ok=True)
        self.set_limits(memory_mb=memory_mb, max_pids=max_pids, cpu=cpu)
        parent = self._exec_parent()
        if parent is not None:
            if lay.version == 2:
                _enable_v2_controllers(parent)
            (parent / "init").mkdir(exist_ok=True)

    def set_limits(self, *, memory_mb: int, max_pids: int, cpu: float) -> None:
        """(Re)apply the limits: used at create and when a standby sandbox is adopted."""
        lay = self.layout
        sid = self.sandbox_id
        period = 100_000
        quota = max(1000, int(cpu * period))
        if lay.version == 1:
            assert lay.memory and lay.pids and lay.cpu
            mem = lay.memory / sid
            _write(mem / "memory.limit_in_bytes", str(memory_mb * 1024 * 1024))
            with contextlib.suppress(OSError):  # absent when the host has no swap accounting
                _write(mem / "memory.memsw.limit_in_bytes", str(memory_mb * 1024 * 1024))
            _write(lay.pids / sid / "pids.max", str(max_pids))
            _write(lay.cpu / sid / "cpu.cfs_period_us", str(period))
            _write(lay.cpu / sid / "cpu.cfs_quota_us", str(quota))
        elif lay.version == 2 and lay.unified:
            base = lay.unified / sid
            _write(base / "memory.max", str(memory_mb * 1024 * 1024))
            with contextlib.suppress(OSError):
                _write(base / "memory.swap.max", "0")
            _write(base / "pids.max", str(max_pids))
            _write(base / "cpu.max", f"{quota} {period}")

    def new_exec_group(self, name: str) -> None:
        """A pids sub-group for one command, so a timeout can kill its whole tree."""
        parent = self._exec_parent()
        if parent is not None:
            (parent / name).mkdir(exist_ok=True)

    def kill_group(self, name: str | None = None, *, deadline_s: float = 5.0) -> None:
        """SIGKILL every process of one command's group (or of the whole sandbox) until none is left."""
        parent = self._exec_parent()
        if parent is None:
            return
        target = parent / name if name else parent
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            pids = _all_pids(target)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        logger.warning("processes still alive in %s after %.1fs", target, deadline_s)

    def remove_exec_group(self, name: str) -> None:
        """Remove a finished command's group; a group still holding processes is kept."""
        parent = self._exec_parent()
        if parent is not None:
            with contextlib.suppress(OSError):
                (parent / name).rmdir()

    def exec_group_pids(self, name: str) -> list[int]:
        parent = self._exec_parent()
        return _all_pids(parent / name) if parent is not None else []

    def cpu_seconds(self) -> float:
        """CPU time the sandbox's processes have used so far (for the budget)."""
        lay = self.layout
        try:
            if lay.version == 1 and lay.cpuacct:
                return int((lay.cpuacct / self.sandbox_id / "cpuacct.usage").read_text()) / 1e9
            if lay.version == 2 and lay.unified:
                for line in (lay.unified / self.sandbox_id / "cpu.stat").read_text().splitlines():
                    if line.startswith("usage_usec"):
                        return int(line.split()[1]) / 1e6
        except (OSError, ValueError):
            pass
        return 0.0

    def destroy(self) -> None:
        """Kill everything left and remove the groups (children first)."""
        self.kill_group()
        for path in self._dirs():
            _rmtree_cgroup(path)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _enable_v2_controllers(path: Path) -> None:
    with contextlib.suppress(OSError):
        _write(path / "cgroup.subtree_control", "+memory +pids +cpu")


def _all_pids(path: Path) -> list[int]:
    pids: list[int] = []
    if not path.is_dir():
        return pids
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids += [int(x) for x in Path(dirpath, "cgroup.procs").read_text().split()]
    return pids


def _rmtree_cgroup(path: Path) -> None:
    if not path.is_dir():
        return
    for dirpath, dirs, _files in os.walk(path, topdown=False):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(dirpath, name))
    with contextlib.suppress(OSError):
        os.rmdir(path)
