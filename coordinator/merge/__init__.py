"""The merge gate's logic: verified merges into ``main``, one at a time, in dependency order (floor 2, no Ray).

:class:`MergeGateCore` (:mod:`.gate`) admits a component's winning slot once everything it
depends on is merged: it writes what differs onto a branch of the main repo in the main-test
sandbox, restarts the dev servers, runs the verification swarm and the success criteria merged
so far, and fast-forwards ``main`` only if all of that passes. :mod:`.models` holds the
request/result models, what is never merged (:func:`is_junk`) and the port protocols;
:mod:`.sandbox` the concrete ports over any sandbox (git kept outside candidate code, dev
servers, satisfaction). The MergeGate actor (``actors/merge_gate.py``) owns one core. See
docs/merge-and-preview.md.
"""

from coordinator.merge.gate import MergeGateCore, MergeQueue, changed_files, criteria_for, verify_target
from coordinator.merge.models import (
    JUNK_DIRS,
    JUNK_SUFFIXES,
    MAX_TREE_BYTES,
    DevServerPort,
    EventPort,
    FetchFile,
    MainRepo,
    MergeRequest,
    MergeResult,
    Satisfy,
    StaleRequestError,
    Verify,
    is_junk,
    sha256_of,
)
from coordinator.merge.sandbox import (
    GitMainRepo,
    MergeGitError,
    SandboxDevServers,
    request_from_sandbox,
    sandbox_satisfy,
)

__all__ = [
    "JUNK_DIRS",
    "JUNK_SUFFIXES",
    "MAX_TREE_BYTES",
    "DevServerPort",
    "EventPort",
    "FetchFile",
    "GitMainRepo",
    "MainRepo",
    "MergeGateCore",
    "MergeGitError",
    "MergeQueue",
    "MergeRequest",
    "MergeResult",
    "SandboxDevServers",
    "Satisfy",
    "StaleRequestError",
    "Verify",
    "changed_files",
    "criteria_for",
    "is_junk",
    "request_from_sandbox",
    "sandbox_satisfy",
    "sha256_of",
    "verify_target",
]
