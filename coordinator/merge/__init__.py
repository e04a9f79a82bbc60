"""The merge gate's logic: verified merges into ``main``, one at a time, in dependency order (floor 2, no Ray).

:class:`MergeGateCore` (:mod:`.gate`) admits a component's winning slot once everything it
depends on is merged: it leaves out what may not reach ``main`` (:mod:`.screen`), commits what
differs onto a branch of the main repo on the gate's host (:mod:`.host_repo`, where no candidate
code runs), brings the main-test sandbox's plain copy of the tree (no ``.git``) to it, restarts
the dev servers, runs the verification swarm and the success criteria merged so far, and
fast-forwards ``main`` only if all of that passes. :mod:`.models` holds the request/result
models, what is never merged (:func:`is_junk`) and the port protocols; :mod:`.sandbox` the
ports over the main-test sandbox (the tree's copy, dev servers, satisfaction). The MergeGate
actor (``actors/merge_gate.py``) owns one core. See docs/merge-and-preview.md.
"""

from coordinator.merge.gate import MergeGateCore, MergeQueue, changed_files, criteria_for, verify_target
from coordinator.merge.host_repo import HostGitRepo, MergeGitError
from coordinator.merge.models import (
    JUNK_DIRS,
    JUNK_SUFFIXES,
    MAX_TREE_BYTES,
    DevServerPort,
    EventPort,
    FetchFile,
    MainCopy,
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
    MainTestSandbox,
    SandboxDevServers,
    SandboxMainCopy,
    request_from_sandbox,
    sandbox_satisfy,
)
from coordinator.merge.screen import screen_request

__all__ = [
    "JUNK_DIRS",
    "JUNK_SUFFIXES",
    "MAX_TREE_BYTES",
    "DevServerPort",
    "EventPort",
    "FetchFile",
    "HostGitRepo",
    "MainCopy",
    "MainRepo",
    "MainTestSandbox",
    "MergeGateCore",
    "MergeGitError",
    "MergeQueue",
    "MergeRequest",
    "MergeResult",
    "SandboxDevServers",
    "SandboxMainCopy",
    "Satisfy",
    "StaleRequestError",
    "Verify",
    "changed_files",
    "criteria_for",
    "is_junk",
    "request_from_sandbox",
    "sandbox_satisfy",
    "screen_request",
    "sha256_of",
    "verify_target",
]
