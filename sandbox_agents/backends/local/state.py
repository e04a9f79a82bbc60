"""The on-disk record of one local sandbox, so that any process can find it again."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from sandbox_agents.backends.base import SandboxSpec
from sandbox_agents.private_files import write_private


class Forwarder(BaseModel):
    """The two socat processes that carry a host port to a port inside the sandbox."""

    model_config = ConfigDict(extra="forbid")

    host_port: int
    pids: list[int] = Field(default_factory=list)


class LocalState(BaseModel):
    """Everything needed to reconnect to a sandbox: written at create, updated on change."""

    model_config = ConfigDict(extra="forbid")

    id: str
    spec: SandboxSpec
    created_at: float = Field(default_factory=time.time)
    launcher_pid: int = 0
    launcher_start: int | None = None
    """Kernel start time of the launcher: a sandbox whose launcher died is dead (its tree is going)."""
    child_pid: int = 0
    child_start: int | None = None
    uid: int
    terminated: bool = False
    quota: bool = False
    """True when the workspace is a tmpfs of ``spec.disk_mb`` (a real disk quota)."""
    ttl_deadline: float = 0.0
    forwarders: dict[int, Forwarder] = Field(default_factory=dict)
    slirp_pid: int | None = None

    def save(self, path: Path) -> None:
        write_private(path, self.model_dump_json())  # 0600: the spec holds the sandbox's secrets

    @classmethod
    def load(cls, path: Path) -> LocalState:
        return cls.model_validate(json.loads(path.read_text()))


def default_root(kriptik_home: Path) -> Path:
    """Where sandboxes of one KRIPTIK_HOME live.

    Not under KRIPTIK_HOME itself: that is often inside /root or a 0700 temp dir that the
    unprivileged sandbox uid cannot traverse, and bwrap (running as that uid) must reach
    the bind sources. One directory per state home keeps test runs apart.
    """
    digest = hashlib.sha256(str(kriptik_home.expanduser().resolve()).encode()).hexdigest()[:10]
    return host_state_dir() / f"sandboxes-{digest}"


def host_state_dir() -> Path:
    """What every local backend of this host shares, whatever its KRIPTIK_HOME: the compiled
    seccomp filter and the uid claims."""
    return Path("/var/lib/kriptik") if os.geteuid() == 0 else Path("/tmp") / f"kriptik-{os.geteuid()}"


# --- tmpfs workspaces (a real disk quota) -----------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_MNT_DETACH = 2


def mount_tmpfs(path: Path, *, size_mb: int, uid: int) -> bool:
    """Mount a tmpfs of ``size_mb`` at ``path``; False (no quota) when not permitted."""
    if os.geteuid() != 0:
        return False
    opts = f"size={size_mb}m,mode=0755,uid={uid},gid={uid}".encode()
    rc = _libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", 0, opts)
    return rc == 0


def unmount(path: Path) -> None:
    with contextlib.suppress(OSError):
        _libc.umount2(str(path).encode(), _MNT_DETACH)


def is_mounted(path: Path) -> bool:
    return os.path.ismount(path)


def unmount_under(root: Path) -> int:
    """Detach every mount below ``root`` (leaked tmpfs workspaces); returns how many."""
    prefix = str(root.resolve()) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return 0
    leaked = [m for m in mounts if m.startswith(prefix)]
    for mount in sorted(leaked, key=len, reverse=True):
        unmount(Path(mount))
    return len(leaked)
