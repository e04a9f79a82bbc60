"""cluster.yaml and the AWS variant pass Ray's own config validator, offline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _validate(path: Path) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return config


def test_local_cluster_yaml_is_valid_for_ray_up() -> None:
    config = _validate(ROOT / "cluster.yaml")
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    assert config["auth"]["ssh_user"]
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert '"sandbox_host"' in worker_start and '"agent_host"' in worker_start
    assert '"control_host"' in " ".join(config["head_start_ray_commands"])


def test_aws_cluster_yaml_is_valid_for_ray_up() -> None:
    config = _validate(ROOT / "deploy" / "cluster-aws.yaml")
    assert config["provider"]["type"] == "aws"
    assert "sandbox_host" in config["available_node_types"]["sandbox_worker"]["resources"]


def test_an_unknown_field_is_refused_by_the_validator(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["not_a_ray_field"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(Exception, match="not_a_ray_field|Additional properties"):
        _validate(bad)


@pytest.mark.parametrize("path", ["cluster.yaml", "deploy/cluster-aws.yaml"])
def test_every_ray_start_uses_token_authentication_with_the_clusters_token(path: str) -> None:
    config = yaml.safe_load((ROOT / path).read_text())
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    assert all(command.startswith("RAY_AUTH_MODE=token RAY_USE_UVLOOP=0 ray start ") for command in starts)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # one token on every host
    assert "chmod 600 ~/.ray/auth_token" in config["setup_commands"]
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
