"""Files that hold secrets: readable and writable by their owner only (0600), replaced atomically.

State files carry what a restarted process needs, and some of that is secret: a sandbox's
spec holds its declared secrets, a build's config the Redis URL with its password and the
LLM provider's settings. On a shared host, a file the default umask left world-readable
(0644) hands them to every local user and to every uid we run untrusted code as.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

PRIVATE_MODE = 0o600


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (a temporary file renamed over it), mode 0600.

    A crash mid-write leaves the previous content, never half of one; the mode is set on the
    temporary file before any byte is written, so the secret is never readable by others.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_MODE)
        with os.fdopen(fd, "w") as out:
            os.fchmod(fd, PRIVATE_MODE)  # a leftover temporary file keeps its old mode through O_CREAT
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
