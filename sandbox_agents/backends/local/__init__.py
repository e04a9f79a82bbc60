"""The local backend: each sandbox a bubblewrap namespace set with cgroup limits and a tmpfs workspace.

:class:`LocalBackend` (:mod:`.backend`) creates, finds, snapshots and restores sandboxes and
keeps a few started ones on standby; :class:`LocalSandbox` (:mod:`.sandbox`) runs commands in
one as its unprivileged uid, every capability dropped. The parts: :mod:`.launch` (the bwrap
command line and the detached launcher), :mod:`.cgroup` (memory, pids and cpu limits, v1 or
v2), :mod:`.seccomp` (the syscall filter), :mod:`.uids` (a host uid per sandbox), :mod:`.enter`
(how a command enters a sandbox, through ``native/kriptik_enter.c`` or a filtered shell chain),
:mod:`.fs` (bounded, non-blocking workspace file access), :mod:`.state` (on-disk state, tmpfs
mounts, port forwarders), :mod:`.proc` (bounded subprocess output) and :mod:`.host` (host-side
helpers: pids, ports, pid files). See
docs/sandboxes.md and docs/security.md.
"""

from sandbox_agents.backends.local.backend import LocalBackend, purge_home
from sandbox_agents.backends.local.sandbox import LocalSandbox
from sandbox_agents.backends.local.state import LocalState, default_root

__all__ = ["LocalBackend", "LocalSandbox", "LocalState", "default_root", "purge_home"]
