"""Where a build's sandboxes run (coordinator/placement.py), and how every creator gets its backend."""

from __future__ import annotations

import pytest

from actors.build.adapters import RayFleet
from actors.build.config import CoordinatorConfig
from actors.pools.fleet import FleetPoolConfig, FleetPools
from coordinator.build.ports import BuildSettings
from coordinator.placement import Placement, place, uses_modal
from sandbox_agents.errors import InvalidInputError

LOCAL = {"type": "local"}
MODAL = {"type": "modal", "app_name": "kriptik-test"}


def test_no_mode_puts_every_sandbox_on_the_servers_backend() -> None:
    placement = place(None, default=MODAL, runs_on={"web": "local"})
    assert placement == Placement.single(MODAL)
    assert placement.mode == "modal" and placement.backend("slot", "web") == MODAL
    assert placement.backend("main") == MODAL == placement.backend("preview")


def test_local_and_modal_modes_put_everything_on_one_backend_whatever_the_default() -> None:
    on_modal = place("modal", default=LOCAL, modal=MODAL, runs_on={"db": "local"})
    assert on_modal.backends() == [MODAL]  # runs_on only splits a hybrid build
    on_local = place("local", default={"type": "fake"})
    assert on_local.backends() == [LOCAL]  # the default is not local: the local backend's own config
    assert place("modal", default=MODAL).backends() == [MODAL]  # the default is Modal: its config, as given


def test_hybrid_runs_components_on_modal_and_the_gate_and_preview_locally_unless_a_component_pins_itself() -> None:
    placement = place("hybrid", default=LOCAL, modal=MODAL, runs_on={"db": "local", "api": "modal", "web": None})
    assert placement.backend("slot", "api") == MODAL == placement.backend("slot", "web")
    assert placement.backend("slot", "db") == LOCAL
    assert placement.backend("main") == LOCAL == placement.backend("preview")
    assert placement.backends() == [MODAL, LOCAL] and uses_modal(placement)
    assert not uses_modal(place("local", default=LOCAL))


@pytest.mark.parametrize(
    ("mode", "runs_on", "field"),
    [("cloud", {}, "build_mode"), ("hybrid", {"web": "gpu"}, "runs_on")],
)
def test_an_unknown_mode_or_runs_on_is_refused_naming_the_field(mode: str, runs_on: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        place(mode, default=LOCAL, runs_on=runs_on)
    assert info.value.field == field


def test_a_config_saved_before_placements_reads_as_everything_on_its_backend() -> None:
    saved = CoordinatorConfig(build_id="b1", redis_url="redis://x", backend=MODAL).model_dump_json()
    config = CoordinatorConfig.model_validate_json(saved)
    assert config.where() == Placement.single(MODAL)
    hybrid = place("hybrid", default=LOCAL, modal=MODAL)
    again = CoordinatorConfig.model_validate_json(
        CoordinatorConfig(build_id="b1", redis_url="redis://x", placement=hybrid).model_dump_json()
    )
    assert again.where() == hybrid


def test_the_fleet_gives_each_slot_its_components_backend_and_compute_is_priced_by_it() -> None:
    hybrid = place("hybrid", default=LOCAL, modal=MODAL, runs_on={"db": "local"})
    fleet = RayFleet("b1", hybrid, None, warm_pools=True)
    assert fleet.backend_of("web~polished") == MODAL and fleet.backend_of("db") == LOCAL
    assert fleet._warm_for(MODAL) is fleet.warm  # the build's main backend: the fleet's own source
    other = fleet._warm_for(LOCAL)
    assert other is not None and other.backend == LOCAL  # asks Control for warm proxies of that backend only
    settings = BuildSettings(backend="modal", component_backends={"db": "local"})
    assert settings.backend_of("db") == "local" and settings.backend_of("web~minimal") == "modal"


async def test_a_warm_pool_never_hands_a_proxy_of_its_backend_to_a_build_on_another() -> None:
    pools = FleetPools(LOCAL, FleetPoolConfig(proxies=1, teams=0, agents=0, swarms=0, refill=False))
    warm = ("kriptik:proxy:w1", object())
    pools.pools["proxy"]._warm.append(warm)  # as a fill leaves it, without starting an actor
    assert await pools.take("proxy", 1, MODAL) == []
    assert await pools.take("proxy", 1, {**LOCAL, "standby": 1}) == [warm]  # standby is not part of the identity


def test_control_refuses_a_per_build_field_in_its_coordinator_defaults() -> None:
    from actors.control import ControlConfig

    with pytest.raises(ValueError, match="must not set backend"):
        ControlConfig(redis_url="redis://x", coordinator={"backend": MODAL, "pool_size": 1})
    assert ControlConfig(redis_url="redis://x", coordinator={"pool_size": 1}).coordinator == {"pool_size": 1}


def test_a_modal_sandbox_that_installs_packages_gets_install_network_and_a_local_one_does_not() -> None:
    from coordinator.contracts import load_contract
    from coordinator.plan import plan_fleet
    from coordinator.resources import examples_dir
    from sandbox_agents.backends.base import NetworkPolicy

    slots = {s.slot_id: s for s in plan_fleet(load_contract(examples_dir() / "intents" / "kanban-vite.yaml")).slots}
    hybrid = place("hybrid", default=LOCAL, modal=MODAL, runs_on={"db": "local"})
    fleet = RayFleet("b1", hybrid, None)
    assert all(s.packages for s in slots.values())  # every kanban-vite component installs npm packages
    assert fleet.spec_of(slots["web~polished"]).network is NetworkPolicy.INSTALL  # on Modal: egress is set at create
    assert fleet.spec_of(slots["db"]).network is NetworkPolicy.NONE  # local: the host's install step feeds it
    hello = plan_fleet(load_contract(examples_dir() / "intents" / "hello-calc.yaml")).slots[0]
    assert not hello.packages and fleet.spec_of(hello).network is NetworkPolicy.NONE  # nothing to install
