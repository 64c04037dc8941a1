"""Ray Train settings the driver takes from the spec (``launch.embedded``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import InputError
from orchestrator.job import WorkerJob
from orchestrator.launch.embedded import _trainer, ray_train_env
from orchestrator.launch.prepared import prepare
from orchestrator.spec import apply_overrides, parse_spec
from tests.conftest import TINY_JOB

KEY = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


def spec(*overrides: str):  # type: ignore[no-untyped-def]
    return parse_spec(apply_overrides(yaml.safe_load(TINY_JOB), list(overrides)))


def test_an_elastic_group_retries_a_placement_that_does_not_come_within_seconds() -> None:
    # A restart sized for a node that is gone retries in 3 s instead of Ray's 60 s.
    assert ray_train_env(spec("resources.workers=[1,2]")) == {KEY: "3"}


def test_a_fixed_group_keeps_rays_own_wait_and_the_spec_overrides_both() -> None:
    assert ray_train_env(spec("resources.workers=2")) == {KEY: "60"}
    assert ray_train_env(spec("resources.workers=[1,2]", "run.worker_start_timeout_s=7.5")) == {
        KEY: "7.5"}
    assert ray_train_env(spec("run.worker_start_timeout_s=120")) == {KEY: "120"}


@pytest.mark.parametrize("value", ["0", "-1", "inf"])
def test_a_start_timeout_that_is_not_a_positive_number_names_the_field(value: str) -> None:
    with pytest.raises(InputError, match="worker_start_timeout_s"):
        spec(f"run.worker_start_timeout_s={value}")


def test_the_trainer_hands_the_setting_to_ray_train_through_the_environment(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train reads it in its controller, which inherits the driver's environment when
    ``fit()`` starts it: building the trainer must have set it by then."""
    monkeypatch.delenv(KEY, raising=False)
    prepared = prepare(spec("resources.workers=[1,2]", "run.worker_start_timeout_s=4"),
                       workdir=workdir)
    job = WorkerJob(spec=prepared.spec, plan=prepared.plan, data=prepared.data,
                    config_file=str(prepared.config_file), output_dir=str(workdir / "out"),
                    run_id="r", tracking_uri="sqlite:///x.db")
    _trainer(job, queue=None)
    assert os.environ[KEY] == "4"
