"""The syscall filter of local sandboxes, compiled by libseccomp (never hand-written BPF).

One filter guards every process of a sandbox: bwrap installs it on the sandbox's init
(``--seccomp FD``) and ``kriptik-enter`` installs the same program on every command it
enters (the shell fallback does it through a few lines of Python, or refuses to run).
The filter is a deny-list at least as strict as the denials of Docker's default profile:
everything below answers ``EPERM`` (``clone3`` answers ``ENOSYS`` so that libc falls back
to ``clone``, whose flags the filter can see), and syscalls of any other ABI than the
host's (32-bit ``int 0x80``, x32) kill the process. docs/security.md says why each entry
is there; a unit test keeps that page and this table in step.

The program is compiled once per host (its file name is a digest of the rules and of the
libseccomp version), written to the host state directory, root-owned and read-only, and
handed to bwrap and to the entry helper by path or file descriptor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sandbox_agents.errors import BackendUnavailableError

logger = logging.getLogger(__name__)

#: Syscalls refused outright (EPERM), with why. Docker's default profile denies each of
#: these to a container without extra capabilities; rows marked "(beyond Docker)" are ours.
DENIED: dict[str, str] = {
    # namespaces and mounts: the way out of the sandbox's view of the host
    "unshare": "new namespaces (a nested user namespace regains every capability inside it)",
    "setns": "joining other namespaces",
    "mount": "mounting over what the host set up (e.g. /run, /proc)",
    "umount2": "unmounting what the host set up",
    "pivot_root": "changing the root of the mount namespace",
    "chroot": "changing the root directory (beyond Docker, which grants CAP_SYS_CHROOT)",
    "move_mount": "new mount API: moving mounts",
    "open_tree": "new mount API: cloning mount trees",
    "fsopen": "new mount API: creating file system contexts",
    "fsconfig": "new mount API: configuring file system contexts",
    "fsmount": "new mount API: creating mounts",
    "fspick": "new mount API: reconfiguring existing mounts",
    "mount_setattr": "new mount API: changing mount flags (e.g. dropping read-only)",
    "name_to_handle_at": "file handles: the sister call of open_by_handle_at",
    "open_by_handle_at": "file handles open files by inode, past any mount or chroot (the 'shocker' escape)",
    # kernel attack surface with a record of privilege escalations
    "keyctl": "kernel keyrings: not namespaced, shared by a uid across sandboxes",
    "add_key": "kernel keyrings: adding keys",
    "request_key": "kernel keyrings: requesting keys (can call the host's upcall helper)",
    "bpf": "eBPF programs and maps: a large, often-exploited kernel surface",
    "perf_event_open": "performance events: kernel address leaks and exploited bugs",
    "userfaultfd": "userfaultfd: stalls kernel threads at will, a staple of kernel exploits",
    "io_uring_setup": "io_uring: a separate syscall path with many privilege escalations (beyond older Docker)",
    "io_uring_enter": "io_uring: see io_uring_setup",
    "io_uring_register": "io_uring: see io_uring_setup",
    "lookup_dcookie": "profiling internals (CAP_SYS_ADMIN)",
    "fanotify_init": "file system wide notification (CAP_SYS_ADMIN)",
    # other processes
    "ptrace": "tracing other processes: with one uid per sandbox only its own, but it would "
    "let a command rewrite the sandbox's init (beyond Docker, which allows it on kernels >= 4.8)",
    "process_vm_readv": "reading another process's memory",
    "process_vm_writev": "writing another process's memory",
    "kcmp": "comparing other processes' kernel objects (a KASLR aid)",
    "pidfd_getfd": "stealing file descriptors from other processes",
    # the host itself: modules, kexec, time, power, swap, accounting, logs, quotas
    "init_module": "loading kernel modules",
    "finit_module": "loading kernel modules",
    "delete_module": "unloading kernel modules",
    "create_module": "obsolete module call",
    "get_kernel_syms": "obsolete module call",
    "query_module": "obsolete module call",
    "kexec_load": "replacing the running kernel",
    "kexec_file_load": "replacing the running kernel",
    "reboot": "rebooting the host",
    "swapon": "host swap",
    "swapoff": "host swap",
    "acct": "process accounting of the whole host",
    "settimeofday": "setting the host clock",
    "clock_settime": "setting the host clock",
    "clock_adjtime": "adjusting the host clock",
    "syslog": "the kernel log (addresses, other tenants' messages)",
    "quotactl": "disk quotas",
    "quotactl_fd": "disk quotas",
    "sethostname": "host name (CAP_SYS_ADMIN)",
    "setdomainname": "NIS domain name (CAP_SYS_ADMIN)",
    "vhangup": "hanging up terminals (CAP_SYS_TTY_CONFIG)",
    "iopl": "raw I/O port access",
    "ioperm": "raw I/O port access",
    # NUMA memory placement (CAP_SYS_NICE in Docker's profile)
    "mbind": "NUMA placement: can degrade other tenants' memory",
    "set_mempolicy": "NUMA placement",
    "get_mempolicy": "NUMA placement (information)",
    "move_pages": "moving other processes' pages",
    "migrate_pages": "moving other processes' pages",
    # obsolete calls nobody needs
    "uselib": "obsolete a.out loader",
    "nfsservctl": "removed NFS server control",
    "sysfs": "obsolete file system type information",
    "_sysctl": "removed binary sysctl",
    "ustat": "obsolete file system statistics",
    "vm86": "virtual 8086 mode (32-bit only)",
    "vm86old": "virtual 8086 mode (32-bit only)",
    "stime": "setting the clock (32-bit only)",
    "umount": "unmounting (32-bit only name)",
}

#: Namespace flags of clone(2): a clone carrying any of them is refused (plain fork and
#: thread creation carry none and pass).
CLONE_NAMESPACE_FLAGS: dict[str, int] = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

#: personality(2) may keep only these bits: PER_LINUX32 (0x8) and UNAME26 (0x20000), the
#: values Docker allows. Every other bit (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC,
#: MMAP_PAGE_ZERO, ADDR_COMPAT_LAYOUT, other execution domains…) is refused.
PERSONALITY_ALLOWED_BITS = 0x00000008 | 0x00020000

#: Answer ENOSYS rather than EPERM: libc then falls back to a call the filter can inspect.
ENOSYS: dict[str, str] = {
    "clone3": "its flags sit in a struct that seccomp cannot read; glibc falls back to clone(2)",
}

CONDITIONAL: dict[str, str] = {
    "clone": "refused when its flags ask for a new namespace (" + ", ".join(CLONE_NAMESPACE_FLAGS) + ")",
    "personality": "refused unless the persona is one of 0, PER_LINUX32, UNAME26 or both (Docker's values)",
}

# libseccomp constants (seccomp.h)
_ACT_ALLOW = 0x7FFF0000
_ACT_KILL_PROCESS = 0x80000000
_FLTATR_ACT_BADARCH = 2
_FLTATR_CTL_OPTIMIZE = 8
_CMP_MASKED_EQ = 7


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise BackendUnavailableError(
            f"the local sandbox backend needs libseccomp ({exc}); Debian: apt-get install libseccomp2",
            backend="local",
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    return lib


def libseccomp_version() -> str:
    version = _libseccomp().seccomp_version().contents
    return f"{version.major}.{version.minor}.{version.micro}"


@dataclass(frozen=True)
class _Rule:
    name: str
    action: int
    cmp: tuple[int, int, int, int] | None = None  # (arg, op, datum_a, datum_b)


def _rules() -> list[_Rule]:
    rules = [_Rule(name, _act_errno(errno.EPERM)) for name in DENIED]
    rules += [_Rule(name, _act_errno(errno.ENOSYS)) for name in ENOSYS]
    for flag in CLONE_NAMESPACE_FLAGS.values():  # x86-64 clone(flags, …): flags is argument 0
        rules.append(_Rule("clone", _act_errno(errno.EPERM), (0, _CMP_MASKED_EQ, flag, flag)))
    for bit in range(32):
        if not (1 << bit) & PERSONALITY_ALLOWED_BITS:
            rules.append(_Rule("personality", _act_errno(errno.EPERM), (0, _CMP_MASKED_EQ, 1 << bit, 1 << bit)))
    return rules


def compile_filter() -> bytes:
    """Build the filter with libseccomp for this host's architecture and return the BPF program."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise BackendUnavailableError("seccomp_init failed", backend="local")
    try:
        if lib.seccomp_attr_set(ctx, _FLTATR_ACT_BADARCH, _ACT_KILL_PROCESS) != 0:
            raise BackendUnavailableError("libseccomp refused the bad-architecture action", backend="local")
        lib.seccomp_attr_set(ctx, _FLTATR_CTL_OPTIMIZE, 2)  # a binary tree of syscalls; older versions say no
        for rule in _rules():
            number = lib.seccomp_syscall_resolve_name(rule.name.encode())
            if number == -1:  # __NR_SCMP_ERROR: a name this libseccomp does not know at all
                raise BackendUnavailableError(
                    f"libseccomp {libseccomp_version()} does not know the syscall {rule.name}", backend="local"
                )
            args = (_ArgCmp * 1)(_ArgCmp(*rule.cmp)) if rule.cmp else None
            rc = lib.seccomp_rule_add_array(ctx, rule.action, number, 1 if rule.cmp else 0, args)
            if rc != 0:
                raise BackendUnavailableError(
                    f"libseccomp refused the rule for {rule.name}: {os.strerror(-rc)}", backend="local"
                )
        with tempfile.TemporaryFile() as out:
            rc = lib.seccomp_export_bpf(ctx, out.fileno())
            if rc != 0:
                raise BackendUnavailableError(f"seccomp_export_bpf failed: {os.strerror(-rc)}", backend="local")
            out.seek(0)
            program = out.read()
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8:
        raise BackendUnavailableError(f"libseccomp made a malformed program ({len(program)} bytes)", backend="local")
    return program


def _digest() -> str:
    rules = [(r.name, r.action, r.cmp) for r in _rules()]
    text = json.dumps({"rules": rules, "libseccomp": libseccomp_version(), "arch": os.uname().machine})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def filter_file(state_dir: Path) -> Path:
    """The compiled filter of this host under ``state_dir`` (compiled and written on first use).

    The file is written atomically (many processes may ask at once) and is read-only;
    only its owner can replace it.

    Raises:
        BackendUnavailableError: libseccomp is missing or refuses the rules: sandboxes
            must not start without their filter.
    """
    folder = state_dir / "seccomp"
    path = folder / f"filter-{_digest()}.bpf"
    if path.is_file() and path.stat().st_size % 8 == 0 and path.stat().st_size > 0:
        return path
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    program = compile_filter()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".filter-")
    try:
        os.write(fd, program)
        os.fchmod(fd, 0o444)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    logger.info("seccomp filter compiled: %s (%d instructions)", path, len(program) // 8)
    return path
