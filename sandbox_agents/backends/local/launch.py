"""Starting a local sandbox: the bwrap command line and a detached launcher.

The launcher is a small ``sh`` in its own session (``setsid -f``), so no Ray worker owns
the sandbox: an actor that dies or restarts leaves it running, and a new process finds it
again by id. The launcher starts bwrap as the sandbox's own uid (joined to the sandbox's
cgroups) and stays, outside the sandbox, as its watchdog; bwrap runs with
``--die-with-parent``, so killing the launcher ends the sandbox and, with its pid
namespace, every process in it.

The TTL is the host's: the watchdog reads the deadline from a file of the host's state
directory that is bound nowhere into the sandbox, and kills bwrap once it has passed (or
once the file is gone). Nothing the sandbox can see or touch (its /run included) holds
its deadline, and the watchdog runs as root outside its namespaces and cgroups, where the
sandbox's processes can neither signal nor starve it. Inside, the init is a bare
``sleep infinity``: an idle sandbox costs nothing.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import time
from pathlib import Path

from sandbox_agents.backends.local.network import LIFELINE
from sandbox_agents.errors import BackendUnavailableError, SandboxError

SANDBOX_HOME = "/home/sandbox"

# The watchdog: until the deadline (CLOCK_BOOTTIME seconds, as /proc/uptime counts) has
# passed, the deadline file is gone or bwrap has exited, sleep a second; then kill bwrap.
# `read`, `set` and `[` are builtins: one `sleep` a second is the whole cost of a sandbox.
_WATCHDOG = (
    'while read d < "$DL" && read up rest < /proc/uptime && [ "${up%.*}" -lt "$d" ] '
    '&& read -r s < "/proc/$b/stat" && set -- $s && [ "$3" != Z ]; do sleep 1; done; '
    'kill -9 "$b" 2>/dev/null; wait "$b"'
)


def boottime_deadline(epoch_deadline: float) -> int:
    """``epoch_deadline`` on the clock the watchdog reads (seconds since boot, rounded up)."""
    return math.ceil(time.clock_gettime(time.CLOCK_BOOTTIME) + (epoch_deadline - time.time()))


REQUIRED_TOOLS = ("bwrap", "setsid", "setpriv", "nsenter", "tar", "zstd")


def check_tools() -> None:
    """Fail with a clear error when a tool the local backend needs is missing."""
    import shutil

    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise BackendUnavailableError(
            f"the local sandbox backend needs {', '.join(missing)} (Debian: apt-get install bubblewrap "
            "util-linux tar zstd); run scripts/setup.sh",
            backend="local",
        )


#: The fd on which the launcher hands bwrap the compiled seccomp filter.
SECCOMP_FD = 4


def bwrap_argv(*, fs_dir: Path, etc_dir: Path, workdir: str, binds: tuple[tuple[Path, str], ...] = ()) -> list[str]:
    """The bwrap command line: only /usr (read-only), stub /etc files, the workspace and home.

    ``binds`` adds read-write host directories (the installer's download cache, nothing else).

    The sandbox gets a user namespace of its own in which it cannot create another
    (``--disable-userns``), and the seccomp filter read from fd ``SECCOMP_FD`` on its init.
    """
    argv = [
        "bwrap",
        "--unshare-all",
        "--unshare-user",  # --unshare-all only tries; --disable-userns needs it for sure
        "--disable-userns",
        "--seccomp",
        str(SECCOMP_FD),
        "--die-with-parent",
        "--cap-drop",
        "ALL",
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in ("bin", "lib", "lib64", "sbin"):
        if Path("/" + name).is_symlink():
            argv += ["--symlink", f"usr/{name}", f"/{name}"]
        elif Path("/" + name).is_dir():
            argv += ["--ro-bind", f"/{name}", f"/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/etc"]
    for name in sorted(os.listdir(etc_dir)):
        argv += ["--ro-bind", str(etc_dir / name), f"/etc/{name}"]
    for name in ("ssl", "ca-certificates", "alternatives"):  # certificates and /usr/bin alternatives
        if Path("/etc", name).is_dir():
            argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    argv += [
        "--bind",
        str(fs_dir / "workspace"),
        workdir,
        "--bind",
        str(fs_dir / "home"),
        SANDBOX_HOME,
    ]
    for source, target in binds:
        argv += ["--bind", str(source), target]
    argv += [
        "--chdir",
        workdir,
        "--hostname",
        "sandbox",
        "--info-fd",
        "3",
        "--",
        "/usr/bin/sleep",
        "infinity",
    ]
    return argv


def launch(
    *,
    bwrap: list[str],
    uid: int,
    cgroup_files: list[str],
    ctl_dir: Path,
    deadline: Path,
    workdir: str,
    seccomp: Path,
    timeout_s: float = 10.0,
) -> tuple[int, int]:
    """Start the sandbox detached, under its watchdog, and wait until it is completely set up.

    bwrap reports its child's pid before that child has pivoted into the new root: a
    command entered into it then would see the host's file system. So a sandbox counts
    as started only once its init has changed into ``workdir`` (the last step of bwrap's
    set-up) and has started its first process.

    Args:
        ctl_dir: host-only directory for the launcher's pid, bwrap's info and its log, and
            the lifeline fifo (``network.make_lifeline``) the launcher holds open while it lives.
        deadline: host-only file the watchdog reads (written by ``LocalSandbox.write_deadline``).
        seccomp: the compiled filter, handed to bwrap on fd ``SECCOMP_FD``.

    Returns:
        (launcher pid, pid of the sandbox's init as seen from the host).
    """
    info = ctl_dir / "info.json"
    joins = "".join(f"echo $$ > {shlex.quote(f)} && " for f in cgroup_files)
    start = f"{joins}exec setpriv --reuid={uid} --regid={uid} --clear-groups {shlex.join(bwrap)}"
    script = (
        f"set -f; echo $$ > {shlex.quote(str(ctl_dir / 'launcher.pid'))} || exit 1; "
        f"DL={shlex.quote(str(deadline))}; "
        f"exec 3>{shlex.quote(str(info))} {SECCOMP_FD}<{shlex.quote(str(seccomp))} || exit 1; "
        f"/bin/sh -c {shlex.quote(start)} 2>{shlex.quote(str(ctl_dir / 'bwrap.log'))} & b=$!; "
        f"exec 3>&- {SECCOMP_FD}<&- 5<>{shlex.quote(str(ctl_dir / LIFELINE))} || exit 1; {_WATCHDOG}"
    )
    subprocess.run(
        ["setsid", "-f", "/bin/sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        check=True,
    )
    give_up = time.monotonic() + timeout_s
    delay = 0.0005
    while time.monotonic() < give_up:
        try:
            child = int(json.loads(info.read_text())["child-pid"])
            launcher = int((ctl_dir / "launcher.pid").read_text())
            if set_up(child, workdir):
                return launcher, child
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
    log = (ctl_dir / "bwrap.log").read_text(errors="replace") if (ctl_dir / "bwrap.log").exists() else ""
    raise SandboxError(f"sandbox did not start within {timeout_s}s: {log.strip() or 'no output from bwrap'}")


def set_up(child: int, workdir: str) -> bool:
    """True once bwrap's child is inside the new root, in ``workdir``, and runs the init."""
    try:
        if os.readlink(f"/proc/{child}/cwd") != workdir:
            return False
        children = Path(f"/proc/{child}/task/{child}/children").read_text().split()
    except OSError:
        return False
    return bool(children)


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (to tell a live sandbox from a reused pid), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie is dead: it only waits to be reaped
        return None
    return int(fields[19])


def write_etc(etc_dir: Path, uid: int) -> None:
    """Stub /etc files: the sandbox user, loopback hosts and DNS, never the host's secrets."""
    etc_dir.mkdir(parents=True, exist_ok=True)
    (etc_dir / "passwd").write_text(
        f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{uid}:{uid}:sandbox:{SANDBOX_HOME}:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    (etc_dir / "group").write_text(f"root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n")
    (etc_dir / "hosts").write_text("127.0.0.1 localhost sandbox\n::1 localhost\n")
    (etc_dir / "resolv.conf").write_text("nameserver 10.0.2.3\n")  # slirp4netns's DNS, when networked
    (etc_dir / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
