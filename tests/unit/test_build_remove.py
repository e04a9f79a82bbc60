"""What deleting a build removes under ``KRIPTIK_HOME``: its files and nothing of any other build."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.build.remove import remove_build, remove_files
from sandbox_agents.errors import InvalidInputError

BUILD = "7b4dacee8194422c"
#: Another build whose id starts with this one's: none of its files may go.
OTHER = "7b4dacee8194422c0"


#: What a build leaves, as ``kriptik up`` lays it out (config, actor states, aliases, gate repo, screenshots).
def layout(build: str) -> list[str]:
    return [
        f"builds/{build}.json",
        f"builds/{build}.admission.json",
        f"gates/{build}.json",
        f"gates/{build}.git/HEAD",
        f"gates/{build}.git/objects/ab/cdef",
        f"previews/{build}.json",
        f"previews/{build}/screenshots/shot-1800000000000.png",
        f"judges/build:{build}:judge.json",
        f"proxies/build:{build}:sbx:takeover-1.json",
        f"proxies/aliases/build:{build}:sbx:preview.json",
        f"proxies/aliases/build:{build}:sbx:frontend~minimal.json",
        f"agents/aliases/build:{build}:agent:backend:0.json",
        f"swarms/aliases/build:{build}:swarm:backend.json",
    ]


SHARED = [
    "store.db",
    "redis/appendonly.aof",
    "proxies/kriptik:proxy:1cadcaf02cca.json",
    "swarms/kriptik:swarm:2d6d.json",
]


def test_every_file_of_the_build_goes_and_nothing_else(tmp_path: Path) -> None:
    for rel in [*layout(BUILD), *layout(OTHER), *SHARED]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    removed = remove_files(BUILD, tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted([*layout(OTHER), *SHARED])
    assert removed == 12  # entries: the .git and the screenshots directories count once each
    assert remove_files(BUILD, tmp_path) == 0  # asked again: nothing left to do


@pytest.mark.parametrize("build_id", ["", "../x", "a/b", "*", "a b", "x" * 200])
async def test_a_build_id_that_could_name_other_files_is_refused(build_id: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        await remove_build(build_id, redis_url="redis://127.0.0.1:9", bus_prefix="kriptik", home=tmp_path)
