"""Every Ray cluster config we ship passes Ray's own preparation and validation, offline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO

CONFIGS = sorted((REPO / "cluster").rglob("*.yaml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_there_is_a_gpu_cluster_config() -> None:
    assert REPO / "cluster" / "gpu.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_accepts_the_config(path: Path) -> None:
    prepared = prepare_config(load(path))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types


def test_gpu_config_installs_the_project_like_readme() -> None:
    config = load(REPO / "cluster" / "gpu.yaml")
    assert any("make env" in cmd for cmd in config["setup_commands"])
    assert config["file_mounts"]["~/orchestrator"] == "."
    workers = [t for name, t in config["available_node_types"].items()
               if name != config["head_node_type"]]
    assert workers and all(t["max_workers"] >= 1 for t in workers)


def test_the_validator_catches_a_misspelt_key() -> None:
    """Guards the test itself: a broken config must not pass."""
    config = copy.deepcopy(load(REPO / "cluster" / "gpu.yaml"))
    config["available_node_types"]["gpu_worker"]["max_wokers"] = 3
    with pytest.raises(Exception, match="max_wokers"):
        validate_config(prepare_config(config))


def test_gpu_config_shows_the_team_setup() -> None:
    """MLflow on the head with PostgreSQL and S3 artifacts, and the job spec the comments
    give (S3 checkpoints, credentials through env_from) is one we accept."""
    from orchestrator.spec import parse_spec
    from tests.conftest import TINY_JOB

    text = (REPO / "cluster" / "gpu.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    assert any("install -y postgresql" in cmd for cmd in config["head_setup_commands"])
    (server,) = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert "--backend-store-uri 'postgresql://" in server
    assert "--artifacts-destination s3://my-team-bucket/mlflow" in server
    lines = text.splitlines()
    start = lines.index("#   tracking:")
    snippet = "\n".join(line[2:] for line in lines[start:start + 5])
    given = yaml.safe_load(snippet.replace("<head-private-ip>", "10.0.0.5"))
    job = yaml.safe_load(TINY_JOB)
    job["tracking"] |= given["tracking"]
    job["run"] = given["run"]
    spec = parse_spec(job)
    assert spec.run.storage_path == "s3://my-team-bucket/checkpoints"
    assert spec.run.env_from == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert spec.tracking.tracking_uri == "http://10.0.0.5:5000"
