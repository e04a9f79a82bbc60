"""A build preview's screenshots over time: a bounded series of PNGs on disk, and when to take the next one.

Ray-free (floor 2). The Preview actor (``actors/preview.py``) owns one :class:`ScreenshotSeries`
in its state directory and one :class:`ShotSchedule` for its ticker; everything else reaches the
PNGs through the actor (the API may run on another host: nobody reads these files but their owner).

* **Bounded.** At most ``keep`` PNGs; adding past it drops the oldest. A PNG identical to the
  newest is not kept again, so a preview that stopped changing does not push its history out.
* **Crash-safe.** A PNG is written under a temporary name and renamed, then the index
  (``screenshots.json``) is replaced the same way; only then are the dropped PNGs deleted. A
  crash leaves the previous index and at most an orphan PNG, which the next add sweeps away.
* **Names are ours.** ``shot-{ms since the epoch}.png`` (:data:`SCREENSHOT_NAME`), strictly
  increasing; a read accepts only a name of that shape that the index lists, never a path.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from coordinator.api_models import SCREENSHOT_NAME
from coordinator.clock import Clock
from sandbox_agents.errors import InvalidInputError, KriptikError

INDEX = "screenshots.json"
_NAME = re.compile(SCREENSHOT_NAME)


class ScreenshotNotFoundError(KriptikError, LookupError):
    """No screenshot of that name in the series (never taken, or dropped past the bound); a 404."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class Screenshot(BaseModel):
    """One entry of the series' index."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SCREENSHOT_NAME)
    taken_at: float
    """Seconds since the epoch."""
    size: int = Field(ge=0)
    """Bytes of the PNG."""
    path: str = "/"
    """The page of the preview it shows."""
    tree: str = ""
    """:func:`tree_digest` of the files the preview served then ("" when unknown)."""
    digest: str
    """SHA-256 of the PNG: an unchanged page is not kept twice."""


_Index = TypeAdapter(list[Screenshot])


def tree_digest(files: dict[str, str]) -> str:
    """A short hash of what a preview serves (path → sha256 of each file); "" for nothing.

    It tells screenshots of different trees apart; it is the preview's own, not git's tree hash.
    """
    if not files:
        return ""
    lines = "".join(f"{path}\0{digest}\n" for path, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()[:12]


def check_name(name: str) -> str:
    """``name`` if it has the shape of a screenshot's name.

    Raises:
        InvalidInputError: Anything else (a path, another extension, a name we never produce).
    """
    if not _NAME.fullmatch(name):
        raise InvalidInputError(f"not a screenshot name: {name!r}", field="name")
    return name


class ScreenshotSeries:
    """The last ``keep`` screenshots of one preview, in ``directory``, newest first.

    Safe to call from several threads (the actor runs file I/O off its event loop). The
    constructor does no I/O; the directory is created by the first :meth:`add`.

    Args:
        directory: Where the PNGs and their index live (one directory per build).
        keep: How many screenshots to keep.
        clock: Time of ``taken_at`` (and so of the names).
    """

    def __init__(self, directory: Path, keep: int, clock: Clock) -> None:
        if keep < 1:
            raise InvalidInputError("a screenshot series keeps at least one", field="keep")
        self.directory = directory
        self.keep = keep
        self.clock = clock
        self._lock = threading.Lock()

    def entries(self) -> list[Screenshot]:
        """The kept screenshots, newest first."""
        with self._lock:
            return self._load()

    def add(self, png: bytes, *, tree: str = "", path: str = "/") -> Screenshot | None:
        """Keep ``png`` as the newest screenshot (dropping the oldest past the bound).

        Returns:
            Its entry, or None when it is identical to the newest one (nothing is written).
        """
        digest = hashlib.sha256(png).hexdigest()
        with self._lock:
            shots = self._load()
            if shots and shots[0].digest == digest:
                return None
            taken_at = self.clock.now()
            ms = int(taken_at * 1000)
            if shots:  # names strictly increase, even if the wall clock steps back
                ms = max(ms, _ms_of(shots[0].name) + 1)
            shot = Screenshot(
                name=f"shot-{ms:013d}.png", taken_at=taken_at, size=len(png), path=path, tree=tree, digest=digest
            )
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.directory / shot.name, png)
            shots = [shot, *shots][: self.keep]
            _write_atomically(self.directory / INDEX, _Index.dump_json(shots))
            self._sweep({s.name for s in shots})
            return shot

    def read(self, name: str) -> bytes:
        """The PNG of the screenshot ``name``.

        Raises:
            InvalidInputError: ``name`` is not a screenshot's name.
            ScreenshotNotFoundError: The series does not hold it.
        """
        check_name(name)
        with self._lock:
            if name in {s.name for s in self._load()}:
                try:
                    return (self.directory / name).read_bytes()
                except FileNotFoundError:
                    pass
        raise ScreenshotNotFoundError(f"no screenshot {name!r}", name=name)

    def clear(self) -> None:
        """Forget every screenshot (the directory goes)."""
        with self._lock:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _load(self) -> list[Screenshot]:
        try:
            return _Index.validate_json((self.directory / INDEX).read_bytes())
        except FileNotFoundError:
            return []

    def _sweep(self, kept: set[str]) -> None:
        """Delete the PNGs the index no longer lists (dropped, or orphaned by a crash) and stray temporaries."""
        for entry in self.directory.iterdir():
            if (_NAME.fullmatch(entry.name) and entry.name not in kept) or entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)


class ShotSchedule:
    """When a preview's ticker takes its next screenshot.

    The first is due at once; then one every ``every_s``, and one soon after each refresh, but
    never sooner than ``min_gap_s`` after the previous one: a burst of merges gets one
    screenshot of where it ended, not one per merge.

    Args:
        every_s: Period of the screenshots (seconds, > 0).
        min_gap_s: Least time between a screenshot and the one a refresh asks for.
    """

    def __init__(self, every_s: float, min_gap_s: float) -> None:
        self.every_s = every_s
        self.min_gap_s = min_gap_s
        self._last: float | None = None
        self._refreshed = False

    def refreshed(self) -> None:
        """The preview changed: a screenshot is wanted as soon as the gap allows."""
        self._refreshed = True

    def due(self, now: float) -> bool:
        """Whether to take a screenshot at ``now`` (monotonic seconds)."""
        if self._last is None or now >= self._last + self.every_s:
            return True
        return self._refreshed and now >= self._last + self.min_gap_s

    def started(self, now: float) -> None:
        """A screenshot starts at ``now``; a refresh during it asks for another one."""
        self._last = now
        self._refreshed = False


def _ms_of(name: str) -> int:
    return int(name.removeprefix("shot-").removesuffix(".png"))


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (a temporary file renamed over it), readable by its owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
