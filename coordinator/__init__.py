"""Floor 2 of KripTik Fleet: the build as a domain, in plain Python (no Ray).

The parts: :mod:`.contracts` and :mod:`.intent` (the IntentContract and its lock),
:mod:`.plan` (the fleet plan), :mod:`.tournament` and :mod:`.judge` (competing candidates and
their verdict), :mod:`.budget` (the cost ledger), :mod:`.control` (admission under quotas, the
priority queue, revival), :mod:`.api_models` (the HTTP bodies), :mod:`.resources` (the example
builds, shipped as package data), and the sub-packages :mod:`.build` (the BuildRun phase
machine and its ports), :mod:`.team` (a component's team runner), :mod:`.merge` (the merge
gate), :mod:`.bus` (Redis Streams) and :mod:`.store` (SQLite). Logic here reaches the world
through small protocols (ports) that the actors of floor 3 pass in, and reads time from an
injected :class:`Clock`; it imports only ``sandbox_agents``. Only the clock is re-exported
here, so that importing any part loads only what that part needs.
"""

from coordinator.clock import Clock, FakeClock, SystemClock

__all__ = ["Clock", "FakeClock", "SystemClock"]
