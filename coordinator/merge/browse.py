"""Read-only views of a build's main for the builder view: its file tree, one file, one merge's diff.

Every read goes through git plumbing on the gate's bare repository (:class:`HostGitRepo`), never
through a file system path: a requested path is only looked up among the tree's entries, so no
path can reach outside main (one that looks like it tries — absolute, ``..``, a NUL — is refused
with :class:`~sandbox_agents.errors.InvalidInputError` before that). Answers are bounded: a file
shows its first :data:`MAX_FILE_BYTES`, a diff at most :data:`MAX_DIFF_BYTES` in all and
:data:`MAX_FILE_DIFF_BYTES` per file, at most :data:`MAX_DIFF_FILES` files.
"""

from __future__ import annotations

from coordinator.api_models import FileDiffView, MainFileEntry, MainFileView, MainTreeView, MergeDiffView
from coordinator.merge.host_repo import HostGitRepo
from sandbox_agents.errors import InvalidInputError, KriptikError

MAX_FILE_BYTES = 256 * 1024
MAX_DIFF_BYTES = 1024 * 1024
MAX_FILE_DIFF_BYTES = 128 * 1024
MAX_DIFF_FILES = 300
MAX_PATH_CHARS = 1024


class NotInMainError(KriptikError, LookupError):
    """No such file or commit in the build's main, or main is not kept any more (a 404)."""


def check_path(path: str) -> str:
    """``path`` if it is a plain relative path inside a tree; InvalidInputError otherwise."""
    parts = path.split("/")
    if (
        not path
        or len(path) > MAX_PATH_CHARS
        or "\0" in path
        or "\\" in path
        or path.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise InvalidInputError(f"{path[:80]!r} is not a relative path inside main", field="path")
    return path


def _text(data: bytes) -> str | None:
    """``data`` as text, or None when it is binary (a NUL, or not UTF-8 apart from a cut last character)."""
    if b"\0" in data:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        if exc.start >= len(data) - 3:  # cut inside the last character by a bound
            return data[: exc.start].decode()
        return None


async def main_tree(repo: HostGitRepo) -> MainTreeView:
    """Every file of main with its size and the component whose merge last wrote it."""
    owners = await repo.owners()
    files = [
        MainFileEntry(path=e.path, size=e.size, component=owners.get(e.path, ""), link=e.is_link)
        for e in await repo.entries()
    ]
    return MainTreeView(head=await repo.head(), files=files)


async def main_file(repo: HostGitRepo, path: str, max_bytes: int = MAX_FILE_BYTES) -> MainFileView:
    """The first ``max_bytes`` of one file of main.

    Raises:
        InvalidInputError: ``path`` is not a relative path inside a tree.
        NotInMainError: main has no file at ``path``.
    """
    check_path(path)
    entry = next((e for e in await repo.entries() if e.path == path), None)
    if entry is None:
        raise NotInMainError(f"main has no file {path!r}")
    data = (await repo.blob(entry.blob))[:max_bytes]
    text = _text(data)
    return MainFileView(
        path=path, size=entry.size, content=text or "", truncated=entry.size > max_bytes, binary=text is None
    )


async def merge_diff(repo: HostGitRepo, commit: str, max_bytes: int = MAX_DIFF_BYTES) -> MergeDiffView:
    """What ``commit`` (a merge of the gate: main's or a rejected branch's) changed against its parent.

    Raises:
        InvalidInputError: ``commit`` is not 7 to 40 lowercase hex digits.
        NotInMainError: the repository holds no such commit.
    """
    try:
        full, parent, message = await repo.commit_of(commit)
    except LookupError as exc:
        raise NotInMainError(str(exc)) from None
    changes = await repo.changes(parent, full)
    files: list[FileDiffView] = []
    left = max_bytes
    for status, path, patch in changes[:MAX_DIFF_FILES]:
        binary = b"\nBinary files " in patch or b"\nGIT binary patch" in patch
        cut = min(MAX_FILE_DIFF_BYTES, max(left, 0))
        text = _text(patch[:cut]) or ""
        left -= len(text.encode())
        files.append(FileDiffView(path=path, status=status, diff=text, truncated=len(patch) > cut, binary=binary))
    truncated = len(changes) > MAX_DIFF_FILES or any(f.truncated for f in files)
    return MergeDiffView(commit=full, parent=parent, message=message, files=files, truncated=truncated)
