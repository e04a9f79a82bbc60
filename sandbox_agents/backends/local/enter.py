"""Entering a command into a local sandbox: the native helper, or the shell chain.

Either way the command joins the sandbox's cgroups (and its own pids sub-group), its
namespaces with the user namespace last, becomes the sandbox's uid with no capability and
``no_new_privs``, and runs under the sandbox's seccomp filter; if the filter cannot be
installed, it does not run at all (exit 126).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

_HELPER = Path(__file__).with_name("native") / "kriptik-enter"
_SOURCE = _HELPER.with_name("kriptik_enter.c")
_stale_warned = False


def enter_helper() -> str | None:
    """The compiled ``kriptik-enter`` (built by scripts/setup.sh), unless KRIPTIK_ENTER=shell asks for the chain.

    A binary older than its source may speak an older argument list (one without the
    seccomp filter): it is not used, and the slower shell chain, which filters too, runs.
    """
    global _stale_warned
    if os.environ.get("KRIPTIK_ENTER") == "shell" or not os.access(_HELPER, os.X_OK):
        return None
    with contextlib.suppress(OSError):
        if _HELPER.stat().st_mtime < _SOURCE.stat().st_mtime:
            if not _stale_warned:
                logger.warning("%s is older than its source (run scripts/setup.sh): using the shell chain", _HELPER)
                _stale_warned = True
            return None
    return str(_HELPER)


# The shell chain: open the filter $1 on fd 3, join the cgroups named by the next $2
# arguments, exec the rest.
_JOIN = (
    'command exec 3<"$1" || exit 126; n=$2; shift 2; '
    'while [ "$n" -gt 0 ]; do echo $$ > "$1"; shift; n=$((n-1)); done; exec "$@"'
)

#: Installs the filter read from fd 3, then execs argv[2:] in directory argv[1] ("-": stay).
#: The entry chain's fallback when the native helper is not built: it refuses to run the
#: command (exit 126) rather than run it unfiltered.
PY_ENTER = """\
import ctypes, os, sys
try:
    program = b""
    while chunk := os.read(3, 65536):
        program += chunk
    os.close(3)
    if not program or len(program) % 8:
        raise OSError("empty or malformed seccomp program")
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = Fprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")
    if sys.argv[1] != "-":
        os.chdir(sys.argv[1])
except OSError as exc:
    sys.stderr.write(f"kriptik-enter (shell): refusing to run unfiltered: {exc}\\n")
    os._exit(126)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"{sys.argv[2]}: {exc.strerror}\\n")
    os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
"""


def entry_argv(
    *, init_pid: int, uid: int, cwd: str, seccomp: Path, cgroup_files: list[str], command: list[str]
) -> list[str]:
    """The argv that runs ``command`` inside the sandbox whose init is ``init_pid``.

    Args:
        cwd: absolute directory inside the sandbox, or "-" for the init's.
        seccomp: the compiled filter file.
        cgroup_files: ``cgroup.procs`` files to join first.
    """
    helper = enter_helper()
    if helper is not None:  # one exec instead of sh + setpriv + nsenter + python
        head = [helper, str(init_pid), str(uid), cwd, str(seccomp), str(len(cgroup_files)), *cgroup_files]
        return [*head, "--", *command]
    # The fallback chain: the shell joins the cgroups and opens the filter on fd 3;
    # setpriv drops host root's groups (setgroups is denied inside the sandbox's user
    # namespace); nsenter joins every namespace, the user namespace last, and becomes
    # the sandbox uid there (no capability survives its exec); Python sets
    # no_new_privs, installs the filter and execs the command (or refuses: never unfiltered).
    shell = ["/bin/sh", "-c", _JOIN, "sh", str(seccomp), str(len(cgroup_files)), *cgroup_files]
    drop_groups = ["setpriv", "--clear-groups", "--"]
    enter = f"nsenter -t {init_pid} -U -m -p -n -i -u --root --wd -S {uid} -G {uid} --".split()
    install = ["/usr/bin/python3", "-I", "-S", "-c", PY_ENTER, cwd]
    return [*shell, *drop_groups, *enter, *install, *command]
