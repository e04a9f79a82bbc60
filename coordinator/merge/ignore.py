"""What a workspace's own ``.gitignore`` files leave out of its merge, decided by git itself.

A component's checks write data next to its code (a JSON file store, a SQLite database, an
upload folder), and a component that says so in a ``.gitignore`` expects that data to stay out
of ``main``, as ``git add`` would keep it out. :func:`ignored_paths` asks ``git check-ignore``
rather than matching patterns here: negations, anchoring, ``**`` and directory rules are git's,
and so is every corner of them.

Git runs on the host that builds the request, in a throwaway repository that holds only copies
of the ``.gitignore`` files: no candidate code, no system or global configuration (so no
``core.excludesFile`` of the host's user), no hooks, a bounded time.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from coordinator.merge.host_repo import MergeGitError
from coordinator.merge.screen import bad_path_reason

IGNORE_FILE = ".gitignore"


def is_ignore_file(path: str) -> bool:
    return posixpath.basename(path) == IGNORE_FILE


async def ignored_paths(paths: Sequence[str], rules: Mapping[str, bytes], *, timeout_s: float = 60.0) -> set[str]:
    """The workspace paths of ``paths`` that the ``.gitignore`` files ``rules`` ignore, as ``git add`` would.

    Args:
        paths: Workspace-relative paths of regular files.
        rules: Workspace-relative path → content of each ``.gitignore`` file; one that is not a clean
            relative path is left out (the gate refuses such a path anyway).
        timeout_s: Bound on the git command.

    Raises:
        MergeGitError: git is missing, failed, or did not answer in time.
    """
    rules = {p: data for p, data in rules.items() if is_ignore_file(p) and bad_path_reason(p) is None}
    if not rules or not paths:
        return set()
    with tempfile.TemporaryDirectory(prefix="kriptik-ignore-") as tmp:
        work = Path(tmp) / "work"
        for path, data in rules.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_bytes(data)
        await _git(tmp, ["init", "-q", "--template=", str(work)], home=tmp, timeout_s=timeout_s)
        stdin = b"".join(p.encode(errors="surrogateescape") + b"\0" for p in paths)
        out = await _git(  # exit 1: no path is ignored
            work, ["check-ignore", "--no-index", "-z", "--stdin"], home=tmp, stdin=stdin, ok=(0, 1), timeout_s=timeout_s
        )
    return {p.decode(errors="surrogateescape") for p in out.split(b"\0") if p}


async def _git(
    cwd: str | Path,
    args: list[str],
    *,
    home: str,
    stdin: bytes | None = None,
    ok: tuple[int, ...] = (0,),
    timeout_s: float,
) -> bytes:
    """Run one git command in ``cwd`` with no configuration but ours; its stdout."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "LANG": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }
    argv = ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.quotePath=off", *args]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
    except OSError as exc:
        raise MergeGitError(f"git {args[0]} could not run: {exc}", command=tuple(args)) from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except TimeoutError as exc:
        raise MergeGitError(f"git {args[0]} did not answer within {timeout_s:.0f}s", command=tuple(args)) from exc
    finally:  # a timeout or a cancellation: the command must not outlive the call
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode not in ok:
        output = err.decode(errors="replace")[-2000:]
        raise MergeGitError(f"git {args[0]} failed ({proc.returncode}): {output}", command=tuple(args), output=output)
    return out
