"""The Modal fake's exec pipes: each parent end is closed once, by the fake, on uvloop as on asyncio.

Ray runs async actors on uvloop by default (ours no longer: ``actors/ray_local.RAY_ENV``), whose
``connect_read_pipe``/``connect_write_pipe`` close a pipe's
descriptor twice (libuv, then the file object; uvloop issue 763). When another thread of the
actor opens a descriptor between the two closes, it takes the freed number and loses it to the
second close: a build on the fake once failed with ``OSError: [Errno 9] Bad file descriptor``.
The fake therefore owns its pipe ends and closes each exactly once itself.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.fakes import fake_modal_ns

Runner = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]
LOOPS: dict[str, Runner] = {"asyncio": lambda main: asyncio.run(main()), "uvloop": lambda main: uvloop.run(main())}


def _open_fds() -> set[int]:
    """This process's open descriptors (not the one the listing itself used)."""
    return {fd for fd in map(int, os.listdir("/proc/self/fd")) if _is_open(fd)}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_every_pipe_end_of_an_exec_is_closed_exactly_once_by_the_fake(
    loop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closes: Counter[int] = Counter()
    real_close = os.close

    def counting_close(fd: int) -> None:
        closes[fd] += 1
        real_close(fd)

    monkeypatch.setattr(fake_modal_ns.os, "close", counting_close)
    results: dict[str, Any] = {}

    async def main() -> None:
        before = _open_fds()
        proc = await fake_modal_ns.start_process(
            ["/bin/sh", "-c", "wc -c; echo done >&2"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}
        )
        opened = _open_fds() - before
        closes.clear()  # from here on, every close is of something the exec opened, or a stray one
        # More than a pipe holds (64 KiB), so the write waits for the child to read.
        await proc.stdin.write_all(b"x" * 1_000_000)
        proc.stdin.close()
        results["stdout"] = await proc.stdout.read()
        results["stderr"] = await proc.stderr.read()
        results["code"] = await proc.wait()
        await asyncio.sleep(0.05)  # a transport would close its descriptor on a later turn
        results["opened"], results["left"] = opened, (_open_fds() - before) & opened

    LOOPS[loop](main)

    assert (results["stdout"].strip(), results["stderr"], results["code"]) == (b"1000000", b"done\n", 0)
    assert results["left"] == set(), "a parent end of the exec's pipes is still open"
    # The three parent ends (and the pidfd) were each closed once, here, and nothing else was.
    assert {fd: closes[fd] for fd in results["opened"]} == dict.fromkeys(results["opened"], 1)
    assert len(results["opened"]) == 4


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_writing_to_an_exec_that_closed_its_stdin_is_a_broken_pipe_not_a_hang(loop: str, tmp_path: Path) -> None:
    async def main() -> None:
        proc = await fake_modal_ns.start_process(["/bin/true"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
        assert await proc.wait() == 0
        with pytest.raises(BrokenPipeError):
            await asyncio.wait_for(proc.stdin.write_all(b"x" * 1_000_000), 10)
        proc.stdin.close()
        proc.stdin.close()  # closing twice is a no-op, never a second close of the number
        with pytest.raises(BrokenPipeError):
            await proc.stdin.write_all(b"late")

    LOOPS[loop](main)
