"""The install phase on the local backend: an installer sandbox fills the host's tree store once per manifest.

Needs the npm registry (CI reaches it); without it the tests skip and say why.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox_agents.backends.base import InstallRequest, SandboxSpec
from sandbox_agents.backends.config import LocalBackendConfig
from sandbox_agents.backends.local.backend import LocalBackend
from sandbox_agents.backends.local.packages import PackageStore
from sandbox_agents.errors import SandboxPathError
from tests.integration.nethost import registry_reachable

pytestmark = pytest.mark.skipif(not registry_reachable(), reason="the npm registry is unreachable from this host")

MANIFEST = {"name": "t", "version": "1.0.0", "private": True, "dependencies": {"is-number": "7.0.0"}}


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    local = LocalBackend(LocalBackendConfig(root=tmp_path / "sbx"))
    local._packages = PackageStore(tmp_path / "packages", max_bytes=1 << 30)  # a store of this test's own
    yield local
    for sandbox in await local.list():
        await sandbox.terminate()
    local.sweep()


async def test_a_manifest_installs_offline_in_its_sandbox_and_a_second_sandbox_reuses_the_tree(
    backend: LocalBackend, tmp_path: Path
) -> None:
    first = await backend.create(SandboxSpec(profile="node"))
    await first.write_file("web/package.json", json.dumps(MANIFEST))
    cold = await first.install(InstallRequest(manager="npm", dir="web"))
    assert cold.ok and not cold.cached, cold.output
    probe = "node -e 'console.log(require(\"./web/node_modules/is-number\")(7))'"
    assert (await first.exec(probe)).stdout.strip() == "true"
    installed = first.workspace / "web/node_modules/is-number/package.json"  # type: ignore[attr-defined]
    assert installed.stat().st_uid == first.uid  # type: ignore[attr-defined]  # the sandbox owns its tree
    lockfile = await first.read_file("web/package-lock.json")  # npm wrote it; it goes back with the component
    assert b'"is-number"' in lockfile
    again = await first.install(InstallRequest(manager="npm", dir="web"))
    assert again.ok and again.cached and not again.changed  # the same tree is there: nothing touched

    # A second sandbox with the lockfile: from the store, with no registry to reach at all.
    backend._packages = PackageStore(  # type: ignore[attr-defined]
        backend.packages.root, max_bytes=1 << 30, registries={"npm": ("registry.invalid",)}
    )
    second = await backend.create(SandboxSpec(profile="node"))
    await second.write_file("web/package.json", json.dumps(MANIFEST))
    await second.write_file("web/package-lock.json", lockfile)
    warm = await second.install(InstallRequest(manager="npm", dir="web"))
    assert warm.ok and warm.cached and warm.changed, warm.output
    assert (await second.exec(probe)).stdout.strip() == "true"


async def test_a_failed_install_is_a_result_with_npms_reason_not_an_exception(backend: LocalBackend) -> None:
    sandbox = await backend.create(SandboxSpec(profile="node"))
    bad = {**MANIFEST, "dependencies": {"kriptik-no-such-package-5c1e": "1.0.0"}}
    await sandbox.write_file("package.json", json.dumps(bad))
    result = await sandbox.install(InstallRequest(manager="npm"))
    assert not result.ok and "404" in result.output
    assert await sandbox.list_files("node_modules/**") == []
    with pytest.raises(SandboxPathError, match="needs the manifest"):
        await sandbox.install(InstallRequest(manager="npm", dir="api"))


async def test_a_link_planted_as_the_manifest_dir_sends_the_unpack_nowhere(
    backend: LocalBackend, tmp_path: Path
) -> None:
    sandbox = await backend.create(SandboxSpec(profile="node"))
    await sandbox.write_file("web/package.json", json.dumps(MANIFEST))
    assert (await sandbox.install(InstallRequest(manager="npm", dir="web"))).ok
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o777)
    os.chmod(outside, 0o777)
    await sandbox.exec(f"mkdir app && cp web/package.json app/ && rm -rf web && ln -s {outside} web")
    with pytest.raises(SandboxPathError):
        await sandbox.install(InstallRequest(manager="npm", dir="web"))
    assert list(outside.iterdir()) == []


async def test_the_store_drops_least_recently_used_trees_past_its_size(backend: LocalBackend) -> None:
    store = backend.packages
    for n, key in enumerate(("old", "mid", "new")):
        archive = store.archive(key)
        archive.write_bytes(b"x" * 400_000)
        os.utime(archive, (1_000_000 + n, 1_000_000 + n))
    store.max_bytes = 900_000
    assert store.evict() == ["old"]
    assert sorted(p.name for p in store.trees.iterdir()) == ["mid.tar.zst", "new.tar.zst"]


@pytest.mark.skipif(not registry_reachable("pypi.org"), reason="PyPI is unreachable from this host")
async def test_a_requirements_file_becomes_a_venv_at_the_components_own_path(backend: LocalBackend) -> None:
    sandbox = await backend.create(SandboxSpec())
    await sandbox.write_file("api/requirements.txt", "six==1.16.0\n")
    result = await sandbox.install(InstallRequest(manager="pip", dir="api"))
    assert result.ok and not result.cached, result.output
    probe = await sandbox.exec(
        "api/.venv/bin/python -c 'import six; print(six.__version__)'; head -1 api/.venv/bin/pip"
    )
    assert probe.stdout.split("\n")[:2] == ["1.16.0", "#!/workspace/api/.venv/bin/python3"], probe

    other = await backend.create(SandboxSpec())  # the same requirements elsewhere: a venv of its own path
    await other.write_file("svc/requirements.txt", "six==1.16.0\n")
    elsewhere = await other.install(InstallRequest(manager="pip", dir="svc"))
    assert elsewhere.ok and elsewhere.key != result.key
    assert (await other.exec("head -1 svc/.venv/bin/pip")).stdout.strip() == "#!/workspace/svc/.venv/bin/python3"
