"""``main`` as a bare git repository on the gate's host, where no candidate code ever runs.

Candidate code runs in the main-test sandbox, which holds a plain copy of the tree and no
``.git`` (:class:`~coordinator.merge.sandbox.SandboxMainCopy`). History lives here, in a
directory of the gate's own (``KRIPTIK_HOME/gates/{build}.git``) that is bound into no sandbox,
so nothing a candidate writes can reach a hook, ``core.fsmonitor``, a ref or an object.

Only plumbing runs, on a private index file: blobs are written with ``hash-object
--no-filters``, trees with ``update-index --index-info`` and ``write-tree``, commits with
``commit-tree``, refs with ``update-ref``. No command reads a work tree, ``.gitattributes``
(filters, ``export-ignore``) or ``.gitignore``, and none runs hooks (``core.hooksPath`` is
``/dev/null``, the repository has no templates), so a file in the tree is data, never
configuration. :meth:`HostGitRepo.tree` reads blobs with ``cat-file``, never ``git archive``.
Git runs with no system or global configuration and a bounded time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox_agents.errors import InvalidInputError, KriptikError

logger = logging.getLogger(__name__)

MAIN = "refs/heads/main"
_ZERO = "0" * 40
_FILE_MODES = ("100644", "100755")
_LINK_MODE = "120000"
_HEX = re.compile(r"[0-9a-f]{7,40}")
_CONFIG = (
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.quotePath=off",
    "-c",
    "gc.auto=0",
)
_IDENTITY = {
    "GIT_AUTHOR_NAME": "KripTik Merge Gate",
    "GIT_AUTHOR_EMAIL": "gate@kriptik.invalid",
    "GIT_COMMITTER_NAME": "KripTik Merge Gate",
    "GIT_COMMITTER_EMAIL": "gate@kriptik.invalid",
}


class MergeGitError(KriptikError, RuntimeError):
    """A git command on the gate's host failed; ``command`` is its arguments, ``output`` its stderr."""

    def __init__(self, message: str, *, command: tuple[str, ...] = (), output: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.output = output


@dataclass(frozen=True)
class TreeEntry:
    """One path of a commit's tree: its mode, blob id and size."""

    mode: str
    blob: str
    size: int
    path: str

    @property
    def is_link(self) -> bool:
        return self.mode == _LINK_MODE


class HostGitRepo:
    """The main repo as a bare git repository in a host directory (see the module docstring).

    Args:
        git_dir: The repository's directory; created by :meth:`init` (mode 0700).
        timeout_s: Bound on one git command.
    """

    def __init__(self, git_dir: Path | str, *, timeout_s: float = 120.0) -> None:
        self.git_dir = Path(git_dir)
        self.timeout_s = timeout_s
        self._sha256: dict[str, str] = {}  # blob id -> sha256 of its bytes (blobs never change)
        self._owners: tuple[str, dict[str, str]] | None = None  # (head, path -> component)

    # --- running git -------------------------------------------------------------------------

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.git_dir),
            "LANG": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            **_IDENTITY,
        }
        return {**env, **(extra or {})}

    async def _git(
        self,
        *args: str,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (0,),
        bare: bool = False,
    ) -> bytes:
        """Run one git command on the repository; its stdout. ``bare`` runs it without ``--git-dir``."""
        argv = ("git", *(() if bare else ("--git-dir", str(self.git_dir))), *_CONFIG, *args)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env(env),
            cwd=self.git_dir.parent,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout_s)
        except BaseException:  # a timeout or a cancellation: the command must not outlive the call
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode not in ok:
            output = err.decode(errors="replace")[-2000:]
            raise MergeGitError(f"git {args[0]} failed ({proc.returncode}): {output}", command=args, output=output)
        return out

    async def _text(
        self, *args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None, bare: bool = False
    ) -> str:
        return (await self._git(*args, stdin=stdin, env=env, bare=bare)).decode(errors="surrogateescape")

    # --- lifecycle -----------------------------------------------------------------------------

    async def init(self) -> bool:
        """Create ``main`` with an empty first commit, or recover an existing repository.

        Returns:
            True when the repository was created now, False when it existed (a restarted gate):
            ``merge/*`` branches of a merge cut short are deleted then.
        """
        if (self.git_dir / "HEAD").exists():
            await self._git("rev-parse", "--verify", "-q", MAIN)
            refs = await self._text("for-each-ref", "--format=%(refname)", "refs/heads/merge/")
            for ref in refs.split():
                await self._git("update-ref", "-d", ref)
            return False
        self.git_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.git_dir.with_name(f".{self.git_dir.name}.{uuid.uuid4().hex}")  # a crash leaves no half repo
        tmp.mkdir(mode=0o700)
        await self._git("init", "-q", "--bare", "--template=", "-b", "main", str(tmp), bare=True)
        empty = (await self._text("--git-dir", str(tmp), "mktree", stdin=b"", bare=True)).strip()
        first = await self._text(
            "--git-dir", str(tmp), "commit-tree", empty, "-m", "main: initial empty commit", bare=True
        )
        await self._git("--git-dir", str(tmp), "update-ref", MAIN, first.strip(), bare=True)
        os.replace(tmp, self.git_dir)
        return True

    def destroy(self) -> None:
        """Delete the repository (the gate is closed for good)."""
        shutil.rmtree(self.git_dir, ignore_errors=True)

    # --- reads ---------------------------------------------------------------------------------

    async def entries(self, rev: str = MAIN) -> list[TreeEntry]:
        """Every blob of ``rev``'s tree (regular files and symlinks), with mode and size."""
        out = await self._git("ls-tree", "-r", "-z", "-l", rev)
        entries = []
        for record in out.decode(errors="surrogateescape").split("\0"):
            if not record:
                continue
            meta, _, path = record.partition("\t")
            mode, kind, blob, size = meta.split()
            if kind == "blob":
                entries.append(TreeEntry(mode, blob, int(size) if size.isdigit() else 0, path))
        return entries

    async def _blobs(self, ids: Sequence[str]) -> dict[str, bytes]:
        """The bytes of each blob id (one ``cat-file --batch`` for all)."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        out = await self._git("cat-file", "--batch", stdin="".join(f"{b}\n" for b in wanted).encode())
        blobs: dict[str, bytes] = {}
        pos = 0
        for blob in wanted:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            if len(header) != 3 or header[1] != b"blob":
                raise MergeGitError(f"cat-file answered {out[pos:end]!r} for blob {blob}", command=("cat-file",))
            size = int(header[2])
            blobs[blob] = out[end + 1 : end + 1 + size]
            pos = end + 1 + size + 1
        return blobs

    async def files(self) -> dict[str, str]:
        """Path → sha256 of every regular file of ``main``."""
        entries = [e for e in await self.entries() if e.mode in _FILE_MODES]
        missing = [e.blob for e in entries if e.blob not in self._sha256]
        for blob, data in (await self._blobs(missing)).items():
            self._sha256[blob] = hashlib.sha256(data).hexdigest()
        return {e.path: self._sha256[e.blob] for e in entries}

    async def links(self) -> dict[str, str]:
        """Path → target of every symlink of ``main``."""
        entries = [e for e in await self.entries() if e.is_link]
        blobs = await self._blobs([e.blob for e in entries])
        return {e.path: blobs[e.blob].decode(errors="surrogateescape") for e in entries}

    async def owners(self) -> dict[str, str]:
        """Path → the component whose merge last wrote it, for every path of ``main``."""
        head = await self.head()
        if self._owners is not None and self._owners[0] == head:
            return dict(self._owners[1])
        log = await self._text(
            "log",
            "--reverse",
            "--no-renames",
            "--name-status",
            "-z",
            "--format=%x01%(trailers:key=Kriptik-Component,valueonly,separator=%x2C)%x02",
            MAIN,
        )
        owners: dict[str, str] = {}
        for record in log.split("\x01")[1:]:
            component, _, changes = record.partition("\x02")
            tokens = changes.lstrip("\0\n").split("\0")
            for status, path in zip(tokens[0::2], tokens[1::2], strict=False):
                if status.startswith("D"):
                    owners.pop(path, None)
                elif path:
                    owners[path] = component.strip()
        self._owners = (head, owners)
        return dict(owners)

    async def head(self) -> str:
        return (await self._text("rev-parse", "--verify", MAIN)).strip()

    async def tree_hash(self) -> str:
        return (await self._text("rev-parse", "--verify", f"{MAIN}^{{tree}}")).strip()

    async def tree(self, max_bytes: int) -> dict[str, bytes]:
        """Every regular file of ``main`` (read blob by blob: no ``git archive``, no attributes)."""
        entries = [e for e in await self.entries() if e.mode in _FILE_MODES]
        size = sum(e.size for e in entries)
        if size > max_bytes:
            raise InvalidInputError(f"main holds {size} bytes, more than {max_bytes}", field="max_bytes")
        blobs = await self._blobs([e.blob for e in entries])
        return {e.path: blobs[e.blob] for e in entries}

    async def blob(self, blob: str) -> bytes:
        """The bytes of one blob (``blob`` is an id from :meth:`entries`)."""
        return (await self._blobs([blob]))[blob]

    async def commit_of(self, rev: str) -> tuple[str, str, str]:
        """``(commit, parent, message)`` of ``rev`` (a hex id), or LookupError when it names no commit here.

        ``rev`` must be hex only: it then cannot be an option, a ref expression or a path.
        """
        if not _HEX.fullmatch(rev):
            raise InvalidInputError(f"{rev!r} is not a commit id (7 to 40 hex digits)", field="commit")
        out = await self._git("rev-parse", "--verify", "-q", f"{rev}^{{commit}}", ok=(0, 1, 128))
        commit = out.decode().strip()
        if not commit:
            raise LookupError(f"no commit {rev} in main's history")
        parent = (await self._text("rev-parse", "--verify", f"{commit}^")).strip()
        message = await self._text("log", "-1", "--format=%B", commit)
        return commit, parent, message.strip()

    async def changes(self, parent: str, commit: str) -> list[tuple[str, str, bytes]]:
        """``(status, path, patch)`` of every file ``commit`` changed against ``parent``, in path order.

        One ``diff-tree`` for the names and one for the patch, with renames, external diff drivers
        and text conversion off (the repository has no configuration that could name them anyway).
        """
        flags = ("-r", "--no-renames", "--no-ext-diff", "--no-textconv", "--no-color", "--full-index")
        names = (await self._text("diff-tree", *flags, "--name-status", "-z", parent, commit)).split("\0")
        files = list(zip(names[0::2], names[1::2], strict=False))
        patch = await self._git("diff-tree", *flags, "-p", parent, commit)
        # A file's patch starts at its "diff --git" header; content lines never do (they start with +, - or space).
        chunks = [c for c in patch.split(b"\ndiff --git ") if c]
        if chunks and chunks[0].startswith(b"diff --git "):
            chunks[0] = chunks[0][len(b"diff --git ") :]
        if len(chunks) != len(files):
            listed = f"diff-tree listed {len(files)} files and {len(chunks)} patches"
            raise MergeGitError(listed, command=("diff-tree",))
        return [(status[:1], path, b"diff --git " + chunk) for (status, path), chunk in zip(files, chunks, strict=True)]

    async def merged(self) -> list[str]:
        log = await self._text("log", "--reverse", "--format=%(trailers:key=Kriptik-Component,valueonly)", MAIN)
        return list(dict.fromkeys(name.strip() for name in log.splitlines() if name.strip()))

    # --- writes --------------------------------------------------------------------------------

    async def stage(
        self,
        branch: str,
        writes: Mapping[str, bytes],
        deletes: Sequence[str],
        message: str,
        *,
        links: Mapping[str, str] | None = None,
    ) -> str:
        """Commit ``main`` plus the changes onto ``refs/heads/{branch}``; returns the commit.

        Paths reach git only as index entries: the caller has screened them
        (:func:`~coordinator.merge.screen.screen_request`), and a path git itself ignores
        (``.git`` anywhere) fails the stage instead of vanishing silently.
        """
        links = dict(links or {})
        base = await self.head()
        with tempfile.TemporaryDirectory(prefix="stage-", dir=self.git_dir) as tmp:
            blobs = await self._hash_objects(Path(tmp), [*writes.values(), *(t.encode() for t in links.values())])
            index: list[str] = [f"0 {_ZERO}\t{path}" for path in deletes]
            paths = [*writes, *links]
            modes = ["100644"] * len(writes) + [_LINK_MODE] * len(links)
            index += [f"{mode} {blob}\t{path}" for mode, blob, path in zip(modes, blobs, paths, strict=True)]
            for blob, data in zip(blobs, writes.values(), strict=False):
                self._sha256[blob] = hashlib.sha256(data).hexdigest()
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            await self._git("read-tree", base, env=env)
            if index:  # git skips a path it refuses (".git" anywhere) with only a warning: checked below
                lines = "".join(f"{entry}\0" for entry in index).encode()
                await self._git("update-index", "-z", "--index-info", stdin=lines, env=env)
            tree = (await self._text("write-tree", env=env)).strip()
        listed = {e.path for e in await self.entries(tree)}
        lost = sorted(p for p in paths if p not in listed)
        if lost:
            raise MergeGitError(f"git left out {', '.join(lost[:5])}", command=("update-index",))
        commit = (await self._text("commit-tree", tree, "-p", base, "-F", "-", stdin=message.encode())).strip()
        await self._git("update-ref", f"refs/heads/{branch}", commit)
        return commit

    async def _hash_objects(self, tmp: Path, blobs: Sequence[bytes]) -> list[str]:
        """Write each blob into the object store (through files in ``tmp``: one git process for all)."""
        if not blobs:
            return []
        names = []
        for i, data in enumerate(blobs):
            name = tmp / f"blob-{i}"
            name.write_bytes(data)
            names.append(str(name))
        out = await self._text("hash-object", "-w", "--no-filters", "--stdin-paths", stdin="\n".join(names).encode())
        ids = out.split()
        if len(ids) != len(blobs):
            raise MergeGitError(f"hash-object wrote {len(ids)} of {len(blobs)} blobs", command=("hash-object",))
        return ids

    async def accept(self, branch: str) -> str:
        """Fast-forward ``main`` to ``branch`` (only if ``main`` is still its parent) and delete ``branch``."""
        ref = f"refs/heads/{branch}"
        commit = (await self._text("rev-parse", "--verify", ref)).strip()
        parent = (await self._text("rev-parse", "--verify", f"{commit}^")).strip()
        await self._git("update-ref", "-m", f"merge {branch}", MAIN, commit, parent)
        await self._git("update-ref", "-d", ref)
        return await self.head()

    async def discard(self, branch: str) -> None:
        """Delete ``branch``; ``main`` is untouched."""
        await self._git("update-ref", "-d", f"refs/heads/{branch}", ok=(0, 1))
