"""Workspace file operations of a Modal sandbox, over ``sb.filesystem.*``.

Every path goes through :func:`workspace_relative` first. Symlinks are resolved *inside*
the sandbox (``realpath`` relative to the workspace, one exec) before a read, write or
remove, so a link that leads out of the workspace is refused as on the local backend. On
Modal such a link could only reach the sandbox's own container, never the host, but the
contract is the same everywhere. Listing is one ``find`` exec rather than one
``filesystem.list_files`` round trip per directory.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING, Any

from sandbox_agents.backends.base import FileInfo
from sandbox_agents.backends.modal.support import glob_match, modal_errors
from sandbox_agents.backends.paths import workspace_relative
from sandbox_agents.errors import SandboxError, SandboxLimitError, SandboxPathError

if TYPE_CHECKING:
    from sandbox_agents.backends.base import ExecResult, SandboxSpec

#: Prints the resolved path if it stays inside the working directory, else exits 3.
_RESOLVE_INSIDE = 'r=$(pwd -P) && p=$(realpath -m -- "$1") && case "$p" in "$r"|"$r"/*) exit 0;; *) exit 3;; esac'
_FIND = ["find", ".", "-mindepth", "1", "-printf", "%y\\t%s\\t%m\\t%P\\0"]


class ModalFiles:
    """File methods of :class:`~sandbox_agents.backends.modal.backend.ModalSandbox` (a mixin)."""

    _sb: Any
    _sdk: Any
    _spec: SandboxSpec

    @property
    def id(self) -> str:  # pragma: no cover - provided by the sandbox
        raise NotImplementedError

    async def exec(
        self,
        command: list[str] | str,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> ExecResult:  # pragma: no cover - provided by the sandbox
        raise NotImplementedError

    def _rel(self, path: str) -> str:
        return workspace_relative(path, workdir=self._spec.workdir, sandbox_id=self.id)

    def _abs(self, path: str) -> str:
        rel = self._rel(path)
        return self._spec.workdir if rel == "." else posixpath.join(self._spec.workdir, rel)

    async def _checked(self, path: str, *, allow_root: bool = False) -> str:
        """The absolute in-sandbox path of ``path``, after refusing escapes (also through symlinks)."""
        rel = self._rel(path)
        if rel == "." and not allow_root:
            raise SandboxPathError("the workspace root is not a file", path=path, sandbox_id=self.id)
        result = await self.exec(["/bin/sh", "-c", _RESOLVE_INSIDE, "sh", rel], timeout=60)
        if result.exit_code == 3:
            raise SandboxPathError(
                f"path {path!r} leads out of the workspace through a symlink", path=path, sandbox_id=self.id
            )
        if result.exit_code != 0:
            raise SandboxError(f"cannot resolve {path!r}: {result.stderr.strip()}", sandbox_id=self.id)
        return self._spec.workdir if rel == "." else posixpath.join(self._spec.workdir, rel)

    async def write_file(self, path: str, data: bytes | str, *, mode: int | None = None) -> None:
        """``filesystem.write_bytes`` (parents are created), then ``chmod`` if a mode is given."""
        payload = data.encode() if isinstance(data, str) else bytes(data)
        if len(payload) > self._spec.disk_mb * 1024 * 1024:
            raise SandboxLimitError(f"{path}: {len(payload)} bytes is over the disk quota", sandbox_id=self.id)
        target = await self._checked(path)
        with modal_errors(self._sdk, sandbox_id=self.id, path=path):
            await self._sb.filesystem.write_bytes.aio(payload, target)
        if mode is not None:
            result = await self.exec(["chmod", format(mode & 0o7777, "o"), self._rel(path)], timeout=60)
            if not result.ok:
                raise SandboxError(f"chmod {path}: {result.stderr.strip()}", sandbox_id=self.id)

    async def read_file(self, path: str) -> bytes:
        """``filesystem.read_bytes``. Raises FileNotFoundError / IsADirectoryError like the other backends."""
        target = await self._checked(path)
        with modal_errors(self._sdk, sandbox_id=self.id, path=path):
            return bytes(await self._sb.filesystem.read_bytes.aio(target))

    async def list_files(self, pattern: str = "**/*") -> list[FileInfo]:
        """Every file and directory under the workspace matching ``pattern``, sorted by path."""
        result = await self.exec(list(_FIND), timeout=120)
        if not result.ok:
            raise SandboxError(f"listing the workspace failed: {result.stderr.strip()}", sandbox_id=self.id)
        if result.truncated:
            raise SandboxLimitError("the workspace listing is larger than the output cap", sandbox_id=self.id)
        out: list[FileInfo] = []
        for record in result.stdout.split("\0"):
            if not record:
                continue
            kind, size, mode, rel = record.split("\t", 3)
            if glob_match(rel, pattern):
                is_dir = kind == "d"
                out.append(FileInfo(path=rel, size=0 if is_dir else int(size), is_dir=is_dir, mode=int(mode, 8)))
        return sorted(out, key=lambda f: f.path)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """``filesystem.remove``; a non-empty directory needs ``recursive=True`` (else IsADirectoryError)."""
        target = await self._checked(path)
        with modal_errors(self._sdk, sandbox_id=self.id, path=path):
            await self._sb.filesystem.remove.aio(target, recursive=recursive)
