"""A host uid per local sandbox, claimed from a configured range.

Sandboxes of one uid share what the kernel keys by uid: the user keyring, signals between
processes, per-uid limits (inotify instances, user namespaces, RLIMIT_NPROC). So each
sandbox gets its own uid, and gives it back only once every process of it is gone.

Claims are files ``<host state>/uids/<uid>`` created with ``O_CREAT | O_EXCL``: atomic
across the processes that start sandboxes on one host (every SandboxProxy actor is a
process of its own), whatever their ``KRIPTIK_HOME``. A claim names its sandbox and where
that sandbox's state lives, so a claim left by a process that died is recognised and
taken back (:meth:`UidPool.reclaim_stale`), never while a process of that uid still runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import random
import time
from collections.abc import Callable
from pathlib import Path

from sandbox_agents.errors import ConfigError, SandboxLimitError

logger = logging.getLogger(__name__)

#: A claim whose sandbox never wrote its state is taken back only after this long (the
#: creating process may still be setting the sandbox up).
UNSTARTED_GRACE_S = 120.0


def uids_in_use() -> set[int]:
    """Effective uids of the host's processes (from ``/proc/<pid>`` ownership; ~1 ms)."""
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.add(entry.stat(follow_symlinks=False).st_uid)
    return found


class UidPool:
    """Claims and releases host uids in ``[first, first + count)``.

    Args:
        claims_dir: host-wide directory of claim files (created 0700).
        is_gone: told a claim's record, answers True when that sandbox is over for good
            (terminated, dead, or never started); used only to take back stale claims.
    """

    def __init__(
        self, *, first: int, count: int, claims_dir: Path, is_gone: Callable[[dict[str, object]], bool]
    ) -> None:
        if first <= 0 or count <= 0:
            raise ConfigError(f"sandbox uid range {first}+{count} must hold positive uids (uid 0 is host root)")
        self.first = first
        self.count = count
        self.claims_dir = claims_dir
        self._is_gone = is_gone

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    def _path(self, uid: int) -> Path:
        return self.claims_dir / str(uid)

    def claim(self, sandbox_id: str, state_path: Path) -> int:
        """A uid for ``sandbox_id`` that no other sandbox holds and no process runs as.

        Raises:
            SandboxLimitError: every uid of the range is held, even after stale claims
                were taken back.
        """
        self.claims_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for attempt in range(2):
            uid = self._try_claim(sandbox_id, state_path)
            if uid is not None:
                return uid
            if attempt == 0 and not self.reclaim_stale():
                break
        raise SandboxLimitError(
            f"no free sandbox uid in {self.first}-{self.last}: every one belongs to a running sandbox "
            "(raise sandbox_uid_count in the local backend config)",
            sandbox_id=sandbox_id,
        )

    def _try_claim(self, sandbox_id: str, state_path: Path) -> int | None:
        record = json.dumps({"sandbox": sandbox_id, "state": str(state_path), "pid": os.getpid(), "at": time.time()})
        busy: set[int] | None = None
        start = random.randrange(self.count)  # spread concurrent claimers over the range
        for offset in range(self.count):
            uid = self.first + (start + offset) % self.count
            if _has_account(uid):  # a host account: never a sandbox's
                continue
            try:
                fd = os.open(self._path(uid), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            with contextlib.suppress(OSError):
                os.write(fd, record.encode())
            os.close(fd)
            if busy is None:
                busy = uids_in_use()
            if uid in busy:
                # A process runs as this uid without a claim (a sandbox from before claims
                # existed): keep the claim as a marker, taken back once nothing runs as it.
                self._write(uid, {"sandbox": None, "state": None, "pid": os.getpid(), "at": time.time()})
                logger.warning("sandbox uid %d is in use outside the claims; skipping it", uid)
                continue
            return uid
        return None

    def _write(self, uid: int, record: dict[str, object]) -> None:
        tmp = self.claims_dir / f".{uid}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self._path(uid))

    def holder(self, uid: int) -> dict[str, object] | None:
        """The claim record of ``uid``, or None when it is free."""
        try:
            return dict(json.loads(self._path(uid).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def release(self, uid: int, sandbox_id: str) -> bool:
        """Give ``uid`` back if ``sandbox_id`` holds it (the caller has ended every process of it)."""
        record = self.holder(uid)
        if record is None or record.get("sandbox") != sandbox_id:
            return False
        with contextlib.suppress(FileNotFoundError):
            self._path(uid).unlink()
        return True

    def reclaim_stale(self) -> int:
        """Take back claims whose sandbox is over and under whose uid nothing runs; returns how many."""
        try:
            names = [n for n in os.listdir(self.claims_dir) if n.isdigit()]
        except FileNotFoundError:
            return 0
        busy = uids_in_use()
        freed = 0
        now = time.time()
        for name in names:
            uid = int(name)
            if uid in busy:
                continue
            record = self.holder(uid)
            if record is None:
                continue
            at = record.get("at")
            young = isinstance(at, int | float) and now - at < UNSTARTED_GRACE_S
            if not record.get("sandbox") or not Path(str(record.get("state"))).exists():
                gone = not young  # a marker, an unreadable claim or a sandbox that never wrote its state
            else:
                gone = self._is_gone(record)
            if gone:
                with contextlib.suppress(FileNotFoundError):
                    self._path(uid).unlink()
                    freed += 1
        if freed:
            logger.info("took back %d stale sandbox uid claim(s)", freed)
        return freed


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
