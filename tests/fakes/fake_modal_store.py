"""Where the Modal fake keeps its "cloud": JSON records under its root, shared by every process on the host.

Modal's sandboxes, images and apps live on Modal's servers, so any process with a token sees the
same ones: a proxy creates a sandbox, another proxy ``from_id``-s it after a restart, a snapshot
taken in one actor is restored by another. The fake gets the same property from the file
system: each object is a small JSON record (``{root}/{kind}/{id}.json``) written atomically and
changed under an exclusive ``flock`` of its own, and every SDK call any process makes is appended
to ``{root}/calls.jsonl``. A record is read afresh on every use, so what one process did (a
terminate, new tags) is what the next call of any other process sees.

A lock is never held across an ``await``: two coroutines of one process asking for the same lock
would block the event loop (``flock`` blocks the thread), so changes are short, synchronous steps.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

#: The kinds of records: one directory each under the root.
KINDS = ("apps", "sandboxes", "images")


class Registry:
    """The records of one fake Modal root (``FakeModal.root``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for kind in (*KINDS, "locks"):
            (root / kind).mkdir(parents=True, exist_ok=True)
        self.call_log = root / "calls.jsonl"

    def _path(self, kind: str, key: str) -> Path:
        if kind not in KINDS or not key or "/" in key or key.startswith("."):
            raise ValueError(f"fake modal: bad record {kind}/{key}")
        return self.root / kind / f"{key}.json"

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the exclusive lock ``name`` (any process of this root) for a short, synchronous step."""
        with open(self.root / "locks" / f"{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def read(self, kind: str, key: str) -> dict[str, Any] | None:
        """The record, or None when there is none."""
        try:
            data = json.loads(self._path(kind, key).read_text())
        except FileNotFoundError:
            return None
        return dict(data)

    def write(self, kind: str, key: str, record: Mapping[str, Any]) -> None:
        """Replace the record atomically (a reader sees the old or the new one, never half of one)."""
        path = self._path(kind, key)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
        os.replace(tmp, path)

    def keys(self, kind: str) -> list[str]:
        """The keys of every record of ``kind``, sorted."""
        return sorted(p.stem for p in (self.root / kind).glob("*.json") if not p.name.startswith("."))

    def log_call(self, entry: Mapping[str, Any]) -> None:
        """Append one call to the shared log (one ``write`` of one line: lines of processes do not mix)."""
        line = (json.dumps(entry, default=str) + "\n").encode()
        fd = os.open(self.call_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def calls(self) -> list[dict[str, Any]]:
        """Every call logged on this root, by any process, in the order they were made."""
        try:
            text = self.call_log.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line]


def jsonable(value: Any) -> Any:
    """An SDK call's argument as the shared log keeps it: SDK objects by id or name, no file data or secrets."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    describe = getattr(value, "_describe", None)
    if describe is not None:
        return describe()
    return repr(value)
