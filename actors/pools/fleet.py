"""The control plane's warm pools: proxies (with standby sandboxes), teams, agents and swarms.

The Control actor owns one :class:`FleetPools`, fills it in the background when it starts and
hands warm actors to every build's coordinator through ``Control.take_warm``; each pool refills
itself as actors are taken, one actor start at a time across all the pools (a refill must not
starve the builds running meanwhile: on 2 cores, seven concurrent starts delayed a crashed
coordinator's restart from about 2.5 s to 5 s). A warm swarm has its browser started too. A
coordinator (and a build's gate and preview, for their sandboxes' proxies) reaches the pools through
:class:`~actors.pools.warm.ControlWarmSource` (re-exported here), which answers "none" when there is
no Control (or it does not answer quickly), so a build then starts its actors cold, as before.
Warm actors are detached (they must outlive the Control incarnation that started them, and a bound
one belongs to its build); the pools' warm lists are saved under ``KRIPTIK_HOME/pools/`` so a
restarted Control adopts them instead of leaking them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors.agent import start_warm_agent
from actors.pools.proxies import ProxyPool
from actors.pools.warm import KINDS, ControlWarmSource, Warm, WarmPool
from actors.swarm import start_warm_swarm, stop_swarm, warm_swarm
from actors.team import start_warm_team, stop_team
from sandbox_agents.errors import InvalidInputError

__all__ = ["ControlWarmSource", "FleetPoolConfig", "FleetPools"]


class FleetPoolConfig(BaseModel):
    """How many actors of each kind the control plane keeps warm (0 turns a pool off)."""

    model_config = ConfigDict(extra="forbid")

    proxies: int = Field(default=1, ge=0, le=64)
    """SandboxProxy actors, each holding ``standby`` started sandboxes."""
    standby: int = Field(default=1, ge=0, le=8)
    """Started standby sandboxes per warm proxy (local backend)."""
    teams: int = Field(default=1, ge=0, le=64)
    """SandboxTeam actors (one per slot)."""
    agents: int = Field(default=4, ge=0, le=256)
    """Agent actors (3–5 per slot)."""
    swarms: int = Field(default=1, ge=0, le=64)
    """Verification Swarm actors (one per slot), each with its browser started."""
    refill: bool = True
    """Top the pools up as builds take from them; False fills them once (``kriptik demo``: one build,
    which refills would only slow down)."""

    def size(self, kind: str) -> int:
        return {"proxy": self.proxies, "team": self.teams, "agent": self.agents, "swarm": self.swarms}[kind]


async def _stop_team(handle: Any, name: str) -> None:
    await stop_team(handle)


async def _stop_swarm(handle: Any, name: str) -> None:
    await stop_swarm(handle)


class FleetPools:
    """One warm pool per kind of fleet actor; a :class:`~actors.pools.warm.WarmSource`.

    Args:
        backend: The backend config of the warm proxies (builds on another backend get none).
        config: Pool sizes.
        persist: Save the warm lists so a restarted owner adopts them (the Control actor).
    """

    def __init__(self, backend: dict[str, Any], config: FleetPoolConfig | None = None, *, persist: bool = False):
        self.config = config or FleetPoolConfig()
        self.backend = dict(backend)
        cfg = self.config
        self.pace = asyncio.Semaphore(1)
        """Every pool's background refill starts one actor at a time, all pools together."""
        common: dict[str, Any] = {"persist": persist, "pace": self.pace, "refill": cfg.refill}
        self.proxies = ProxyPool(backend, size=cfg.proxies, standby=cfg.standby, **common)
        self.pools: dict[str, WarmPool] = {
            "proxy": self.proxies.warm,
            "team": WarmPool("team", start_warm_team, size=cfg.teams, stop=_stop_team, **common),
            "agent": WarmPool("agent", start_warm_agent, size=cfg.agents, **common),
            "swarm": WarmPool("swarm", start_warm_swarm, size=cfg.swarms, ready=warm_swarm, stop=_stop_swarm, **common),
        }

    async def fill(self) -> None:
        """Bring every pool to its size, all kinds at once: the starts are asked for in the order builds
        need them (proxies, teams, agents, swarms), and one kind's readiness work (standby sandboxes,
        browsers) overlaps the next kind's process starts."""
        await asyncio.gather(*(self.pools[kind].fill() for kind in KINDS))

    async def take(self, kind: str, count: int = 1, backend: dict[str, Any] | None = None) -> list[Warm]:
        """Up to ``count`` warm actors of ``kind`` (none when ``backend`` is not the proxies' backend).

        Raises:
            InvalidInputError: ``kind`` is not one of proxy, team, agent, swarm.
        """
        if kind not in self.pools:
            raise InvalidInputError(f"no warm pool of {kind!r}; kinds: {', '.join(KINDS)}", field="kind")
        if kind == "proxy" and backend is not None and not _same_backend(backend, self.backend):
            return []
        return self.pools[kind].take_many(count)

    def warm(self) -> dict[str, int]:
        """Warm actors per kind, right now."""
        return {kind: len(pool) for kind, pool in self.pools.items()}

    async def close(self) -> None:
        """Stop every warm actor never handed out (bound ones belong to their builds)."""
        await asyncio.gather(*(pool.close() for pool in self.pools.values()))


def _same_backend(a: dict[str, Any], b: dict[str, Any]) -> bool:
    strip = {"standby"}
    return {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}
