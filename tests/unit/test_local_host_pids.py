"""A recorded pid is killed only while it is still the recorded process (pids are handed out again).

A sandbox's state keeps the pids of its launcher, forwarders and slirp4netns; when one of them
died long ago, a kill by the bare number hit whatever process got the number next (the test
runner, in one CI-style run).
"""

from __future__ import annotations

import subprocess
import sys
import time

from sandbox_agents.backends.local.host import kill_pid, runs


def test_a_pid_whose_command_line_lacks_the_sandboxs_mark_is_left_alone() -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "some-other-process"])
    try:
        deadline = time.monotonic() + 30
        while not runs(other.pid, "some-other-process"):  # until the child has exec'd (its cmdline is its own)
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.01)
        kill_pid(other.pid, "/var/lib/kriptik/sandboxes-x/sbx-1/fwd")  # a sandbox's socat had this pid once
        assert other.poll() is None and runs(other.pid, "some-other-process")
        kill_pid(other.pid, "some-other-process")  # still the recorded one: killed
        assert other.wait(timeout=10) == -9
        assert not runs(other.pid, "some-other-process")
    finally:
        if other.poll() is None:
            other.kill()
