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
