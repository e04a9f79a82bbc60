"""The agent's ``search`` tool: a regular expression over the workspace's files, within bounds.

Reads through the :class:`~sandbox_agents.backends.base.Sandbox` protocol in small concurrent
batches, skipping dependency and VCS directories unless the glob names them, binary files and
files over a size cap; stops at a total-bytes cap or ``max_results``. Every bound it hits is
told to the model in the summary, so it knows to narrow ``path_glob``.
:class:`~sandbox_agents.tools.AgentTools` compiles the pattern and checks the glob first.
"""

from __future__ import annotations

import asyncio
import re

from sandbox_agents.backends.base import FileInfo, Sandbox

#: Bounds of one search, so a big workspace cannot stall an agent or flood its context.
SEARCH_MAX_FILES = 2_000
SEARCH_MAX_FILE_BYTES = 1_000_000
SEARCH_MAX_TOTAL_BYTES = 16_000_000
SEARCH_READ_CONCURRENCY = 16
#: Directories a search skips unless its glob names them (dependencies, VCS, build output).
SEARCH_SKIP_DIRS = frozenset({"node_modules", ".git", "__pycache__", ".venv", ".next", "dist"})
#: Longest line shown in a search hit, and the longest part of a line matched (a bound on regex cost).
LINE_SHOWN_CAP = 300
LINE_MATCH_CAP = 4_000


async def search_workspace(
    sandbox: Sandbox, regex: re.Pattern[str], glob: str, max_results: int
) -> tuple[list[str], str]:
    """Lines matching ``regex`` in the files ``glob`` lists, as ``path:line: text``, and a summary.

    Args:
        sandbox: Where to read.
        regex: The compiled pattern (matched against each line's first ``LINE_MATCH_CAP`` characters).
        glob: A workspace-relative glob, already checked to stay inside the workspace.
        max_results: Most matching lines.

    Returns:
        The hits, and a one-line summary of what was searched and which bounds were hit.
    """
    named = set(glob.split("/"))
    candidates = [
        e
        for e in await sandbox.list_files(glob)
        if not e.is_dir and not (SEARCH_SKIP_DIRS & (set(e.path.split("/")[:-1]) - named))
    ]
    hits: list[str] = []
    notes: list[str] = []
    scanned = total = 0
    too_big = [e for e in candidates if e.size > SEARCH_MAX_FILE_BYTES]
    queue = [e for e in candidates if e.size <= SEARCH_MAX_FILE_BYTES]
    if too_big:
        notes.append(f"skipped {len(too_big)} files over {SEARCH_MAX_FILE_BYTES} bytes")
    if len(queue) > SEARCH_MAX_FILES:
        notes.append(f"searched only the first {SEARCH_MAX_FILES} of {len(queue)} files; narrow path_glob")
        queue = queue[:SEARCH_MAX_FILES]
    for start in range(0, len(queue), SEARCH_READ_CONCURRENCY):
        if total >= SEARCH_MAX_TOTAL_BYTES:
            notes.append(f"stopped after reading {total} bytes; narrow path_glob")
            break
        batch = queue[start : start + SEARCH_READ_CONCURRENCY]
        contents = await asyncio.gather(*(_read_for_search(sandbox, e) for e in batch))
        for entry, data in zip(batch, contents, strict=True):
            if data is None:
                continue
            scanned += 1
            total += len(data)
            hits.extend(_matches(entry.path, data, regex, max_results - len(hits)))
            if len(hits) >= max_results:
                break
        if len(hits) >= max_results:
            notes.append(f"stopped at max_results={max_results}")
            break
    summary = f"{len(hits)} matching lines in {scanned} files searched" + "".join(f"; {n}" for n in notes)
    return hits, summary


async def _read_for_search(sandbox: Sandbox, entry: FileInfo) -> bytes | None:
    try:
        return await sandbox.read_file(entry.path)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None  # gone or unreadable since the listing: not a match, not an error


def _matches(path: str, data: bytes, regex: re.Pattern[str], room: int) -> list[str]:
    if room <= 0 or b"\0" in data[:8192]:
        return []
    out: list[str] = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if regex.search(line[:LINE_MATCH_CAP]):
            out.append(f"{path}:{number}: {line.strip()[:LINE_SHOWN_CAP]}")
            if len(out) >= room:
                break
    return out
