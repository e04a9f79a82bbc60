"""File operations on a local sandbox's workspace from the host, safe against symlinks.

The workspace belongs to the sandbox, so anything in it may be a symlink planted by an
agent. Every path is walked one component at a time with ``O_NOFOLLOW`` from a directory
fd of the workspace root: a symlink anywhere on the way is refused, never followed, so a
link to ``/etc/shadow`` or to ``/`` cannot make the host read or write outside.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from sandbox_agents.backends.base import FileInfo
from sandbox_agents.errors import SandboxPathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkspaceFS:
    """Symlink-safe file access under one workspace root, creating files as the sandbox uid."""

    def __init__(self, root: Path, *, uid: int, gid: int, sandbox_id: str) -> None:
        self.root = root
        self.uid = uid
        self.gid = gid
        self.sandbox_id = sandbox_id

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
                    os.mkdir(part, 0o755, dir_fd=fd)
                    os.chown(part, self.uid, self.gid, dir_fd=fd, follow_symlinks=False)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise self._refuse(rel, f"{part!r} is a symlink or not a directory") from None
                    raise
                os.close(fd)
                fd = nxt
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def write(self, rel: str, data: bytes, mode: int | None) -> None:
        with self._parent_fd(rel, create=True) as (dfd, name):
            try:
                fd = os.open(
                    name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd
                )
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise self._refuse(rel, "is a symlink") from None
                if exc.errno == errno.EISDIR:
                    raise IsADirectoryError(errno.EISDIR, "is a directory", rel) from None
                raise
            try:
                os.fchown(fd, self.uid, self.gid)
                if mode is not None:
                    os.fchmod(fd, mode & 0o7777 & ~0o6000)  # never setuid/setgid
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)

    def read(self, rel: str) -> bytes:
        with self._parent_fd(rel, create=False) as (dfd, name):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise self._refuse(rel, "is a symlink") from None
                raise
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise IsADirectoryError(errno.EISDIR, "not a regular file", rel)
                chunks = []
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
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
        out: list[FileInfo] = []
        root = str(self.root)
        for dirpath, dirs, files in os.walk(root, followlinks=False):
            reldir = os.path.relpath(dirpath, root)
            for name in dirs + files:
                rel = name if reldir == "." else f"{reldir}/{name}"
                if not _match(rel, pattern):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(os.path.join(dirpath, name))
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
