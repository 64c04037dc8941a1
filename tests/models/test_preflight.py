"""Driver-side config checks: a panoptic config needs panoptic data (exit 2 before Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import InputError
from orchestrator.models.preflight import PANOPTIC_KEY, check_trainable, config_value
from tests.conftest import REPO, TINY_JOB, write_spec

PANOPTIC = REPO / "configs/blendmask/Panoptic/R_50_3x.yaml"


def test_config_value_follows_the_base_chain_and_opts() -> None:
    assert config_value(PANOPTIC, PANOPTIC_KEY) is True  # set two _BASE_ levels up
    assert config_value(PANOPTIC, "MODEL.RESNETS.DEPTH") == 50
    assert config_value(PANOPTIC, "SOLVER.MAX_ITER") == 270000  # the child wins
    assert config_value(PANOPTIC, PANOPTIC_KEY, [PANOPTIC_KEY, "False"]) is False
    assert config_value(REPO / "configs/blendmask/R_50_1x.yaml", PANOPTIC_KEY) is False
    assert config_value(REPO / "configs/condinst/MS_R_50_1x.yaml", PANOPTIC_KEY) is None


def test_check_trainable_refuses_panoptic_configs_on_instance_data_only() -> None:
    with pytest.raises(InputError, match="has no panoptic annotations; give "
                       "data.train.panoptic_json and data.train.panoptic_root"):
        check_trainable(PANOPTIC, panoptic_data=False)
    assert check_trainable(PANOPTIC, panoptic_data=True) is None
    assert check_trainable(PANOPTIC, [PANOPTIC_KEY, False], panoptic_data=False) is None
    assert check_trainable(REPO / "configs/blendmask/R_50_3x.yaml", panoptic_data=False) is None
    note = check_trainable(REPO / "configs/blendmask/R_50_3x.yaml", panoptic_data=True)
    assert note is not None and "thing instances only" in note


def test_submitting_a_panoptic_config_on_instance_data_exits_2(workdir: Path) -> None:
    job = write_spec(workdir / "job.yaml", TINY_JOB.replace("arch: mask_rcnn", "arch: blendmask")
                     .replace("configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml",
                              "configs/blendmask/Panoptic/R_50_1x.yaml"))
    result = CliRunner().invoke(app, ["submit", str(job), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "is a panoptic config" in " ".join(result.output.split())
    assert "data.synthetic.stuff_classes > 0" in " ".join(result.output.split())
    assert not (workdir / "mlflow.db").exists()

