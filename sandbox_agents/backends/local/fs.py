"""File operations on a local sandbox's workspace from the host, safe against symlinks.

The workspace belongs to the sandbox, so anything in it may be a symlink planted by an
agent. Every path is walked one component at a time with ``O_NOFOLLOW`` from a directory
fd of the workspace root: a symlink anywhere on the way is refused, never followed, so a
link to ``/etc/shadow`` or to ``/`` cannot make the host read or write outside.

Anything in it may also be a trap for the reader: a FIFO (an open that blocks until a
writer comes), a socket, or a sparse file of 50 GB that reads as zeros for as long as the
host cares to read. So files are opened ``O_NONBLOCK`` and used only if ``fstat`` says
regular, reads stop at the cap plus one byte whatever ``st_size`` claimed, and listing
walks directory fds (``os.fwalk``), never path names. These calls block on disk only:
callers run them in a worker thread, off the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from sandbox_agents.backends.base import MAX_READ_BYTES, FileInfo
from sandbox_agents.errors import SandboxPathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


class WorkspaceFS:
    """Symlink-safe file access under one workspace root, creating files as the sandbox uid."""

    def __init__(self, root: Path, *, uid: int, gid: int, sandbox_id: str, read_cap: int = MAX_READ_BYTES) -> None:
        self.root = root
        self.uid = uid
        self.gid = gid
        self.sandbox_id = sandbox_id
        self.read_cap = read_cap

    def _refuse(self, rel: str, why: str) -> SandboxPathError:
        return SandboxPathError(f"{rel}: {why}", path=rel, sandbox_id=self.sandbox_id)

    @contextlib.contextmanager
    def _parent_fd(self, rel: str, *, create: bool) -> Iterator[tuple[int, str]]:
        """Yield (fd of the parent directory, final name), walking without following links."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if not parts:
            raise self._refuse(rel, "is the workspace root")
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise FileNotFoundError(errno.ENOENT, "no such file or directory", rel) from None
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        os.chown(part, self.uid, self.gid, dir_fd=fd, follow_symlinks=False)
                    except FileExistsError:
                        pass  # a concurrent write made it first (writes run in threads): open it as it is
                    nxt = self._open_dir(rel, part, fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise self._refuse(rel, f"{part!r} is a symlink or not a directory") from None
                    raise
                os.close(fd)
                fd = nxt
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def open_dir(self, rel: str) -> int:
        """An fd of the directory ``rel`` (the root for ``.``), reached without following any link.

        Host-side tools that must act inside a directory of the workspace (unpacking a
        dependency tree) work from this fd (``/proc/self/fd/N``), so a link the sandbox swaps
        in after a check can never redirect them.
        """
        if rel in ("", "."):
            return os.open(self.root, _DIR_FLAGS)
        with self._parent_fd(rel, create=False) as (dfd, name):
            return self._open_dir(rel, name, dfd)

    def _open_dir(self, rel: str, part: str, dfd: int) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._refuse(rel, f"{part!r} is a symlink or not a directory") from None
            raise

    def _open(self, rel: str, dfd: int, name: str, flags: int) -> int:
        """Open a regular file (never following a link, never waiting on a FIFO), or refuse."""
        try:
            fd = os.open(name, flags | _FILE_FLAGS, 0o644, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refuse(rel, "is a symlink") from None
            if exc.errno == errno.EISDIR:
                raise IsADirectoryError(errno.EISDIR, "is a directory", rel) from None
            if exc.errno == errno.ENXIO:  # a socket, or a FIFO nobody reads (write side)
                raise self._refuse(rel, "is a socket or a FIFO, not a regular file") from None
            raise
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return fd
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", rel)
        raise self._refuse(rel, f"is {_kind(mode)}, not a regular file")

    def write(self, rel: str, data: bytes, mode: int | None) -> None:
        with self._parent_fd(rel, create=True) as (dfd, name):
            fd = self._open(rel, dfd, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                os.set_blocking(fd, True)
                os.fchown(fd, self.uid, self.gid)
                if mode is not None:
                    os.fchmod(fd, mode & 0o7777 & ~0o6000)  # never setuid/setgid
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)

    def read(self, rel: str) -> bytes:
        """The file's bytes, if it is a regular file of at most ``read_cap`` bytes.

        Raises:
            SandboxPathError: a symlink, FIFO, socket or device, or a file past the cap
                (checked on ``st_size`` first, then on what is actually read: at most the
                cap plus one byte is ever read).
        """
        cap = self.read_cap
        with self._parent_fd(rel, create=False) as (dfd, name):
            fd = self._open(rel, dfd, name, os.O_RDONLY)
            try:
                too_big = self._refuse(rel, f"is larger than the read cap of {cap} bytes")
                if os.fstat(fd).st_size > cap:
                    raise too_big
                chunks = []
                left = cap + 1
                while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                    chunks.append(chunk)
                    left -= len(chunk)
                if left <= 0:
                    raise too_big
                return b"".join(chunks)
            finally:
                os.close(fd)

    def remove(self, rel: str, *, recursive: bool) -> None:
        with self._parent_fd(rel, create=False) as (dfd, name):
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dfd)
                return
            if not recursive:
                raise IsADirectoryError(errno.EISDIR, "is a directory; pass recursive=True", rel)
            _rmtree_at(dfd, name)

    def list(self, pattern: str) -> list[FileInfo]:
        """Every entry under the root matching ``pattern``, walked from directory fds."""
        out: list[FileInfo] = []
        for dirpath, dirs, files, dirfd in os.fwalk(self.root, follow_symlinks=False):
            reldir = os.path.relpath(dirpath, self.root)
            for name in dirs + files:
                rel = name if reldir == "." else f"{reldir}/{name}"
                if not _match(rel, pattern):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                    out.append(
                        FileInfo(
                            path=rel,
                            size=st.st_size,
                            is_dir=stat.S_ISDIR(st.st_mode),
                            mode=stat.S_IMODE(st.st_mode),
                        )
                    )
        return sorted(out, key=lambda f: f.path)


def _match(rel: str, pattern: str) -> bool:
    if pattern in ("**/*", "**"):
        return True
    if fnmatch.fnmatchcase(rel, pattern):
        return True
    # "**/x" also matches "x" at the top level, as in most glob dialects.
    return pattern.startswith("**/") and fnmatch.fnmatchcase(rel, pattern[3:])


def _rmtree_at(parent_fd: int, name: str) -> None:
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        for entry in os.listdir(fd):
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _rmtree_at(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)
