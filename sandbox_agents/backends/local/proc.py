"""Running one command's process from the host: capped output, timeouts, streaming.

Reading happens in a worker thread with ``selectors`` (so it works on any event loop,
uvloop included, and from any thread): output past the cap is drained and dropped, never
kept; when the entered process exits, what is already buffered is read and the pipes are
let go, so a command that leaves a server running in the background returns at once.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: After the main process exits, how long to keep draining pipes held by background children.
_EXIT_DRAIN_S = 0.05


@dataclass
class ProcOutput:
    """What a process wrote and how it ended."""

    exit_code: int | None = None
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    timed_out: bool = False
    duration_s: float = 0.0


def run_process(
    argv: list[str],
    *,
    env: dict[str, str],
    stdin: bytes | None,
    timeout_s: float | None,
    output_cap: int,
    on_timeout: Callable[[subprocess.Popen[bytes]], None],
    on_chunk: Callable[[str, bytes], None] | None = None,
) -> ProcOutput:
    """Run ``argv`` to its end (blocking: call it in a thread).

    Args:
        on_timeout: kills the process tree when the deadline passes.
        on_chunk: if given, receives ("stdout"|"stderr", bytes) as output arrives.
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        close_fds=True,
        start_new_session=True,
    )
    out = ProcOutput()
    if stdin is not None and proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    deadline = started + timeout_s if timeout_s else None
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
        os.set_blocking(pipe.fileno(), False)
        sel.register(pipe, selectors.EVENT_READ, name)
    exited_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if deadline is not None and now >= deadline and exited_at is None:
                out.timed_out = True
                on_timeout(proc)
                deadline = None
                exited_at = time.monotonic()  # drain briefly, then stop
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > _EXIT_DRAIN_S:
                break
            wait = 0.05
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            for key, _ in sel.select(wait):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                buf = out.stdout if key.data == "stdout" else out.stderr
                room = output_cap - len(buf)
                if room > 0:
                    buf += data[:room]
                if len(data) > room:
                    out.truncated = True
                if on_chunk is not None:
                    on_chunk(key.data, data[: max(room, 0)] if len(data) > room else data)
    finally:
        sel.close()
        for pipe in (proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()
    try:  # the main process has exited (or was killed on timeout): reap it
        out.exit_code = proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        on_timeout(proc)
        out.exit_code = proc.wait()
    out.duration_s = time.monotonic() - started
    return out
