"""Workspace paths: every path from a user or an agent resolves inside the workspace."""

from __future__ import annotations

import posixpath

from sandbox_agents.errors import SandboxPathError

WORKSPACE = "/workspace"


def workspace_relative(path: str, *, workdir: str = WORKSPACE, sandbox_id: str | None = None) -> str:
    """Normalise ``path`` to a relative path inside the workspace, or refuse it.

    Relative paths are taken from the workspace root; absolute ones must lie under
    ``workdir``. ``..`` that climbs out, NUL bytes and empty paths raise SandboxPathError.
    Symlinks are checked by each backend where it touches the file system.

    Returns:
        The normalised relative path; ``"."`` is the workspace root itself.
    """
    if not isinstance(path, str) or not path or "\0" in path:
        raise SandboxPathError(f"invalid path {path!r}", path=str(path), sandbox_id=sandbox_id)
    if posixpath.isabs(path):
        normal = posixpath.normpath(path)
        root = posixpath.normpath(workdir)
        if normal != root and not normal.startswith(root + "/"):
            raise SandboxPathError(
                f"path {path!r} is outside the workspace {workdir}", path=path, sandbox_id=sandbox_id
            )
        rel = posixpath.relpath(normal, root)
    else:
        rel = posixpath.normpath(path)
    if rel == ".." or rel.startswith("../"):
        raise SandboxPathError(f"path {path!r} escapes the workspace", path=path, sandbox_id=sandbox_id)
    return rel
