"""``orchestrator submit`` of BlendMask and CondInst for real: local Ray, 2 gloo workers, MLflow."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import REPO, TINY_JOB, write_spec

runner = CliRunner()

CONFIGS = {
    "condinst": "configs/condinst/condinst_R_18_demo.yaml",
    "blendmask": "configs/blendmask/blendmask_R_18_demo.yaml",
}
LOSSES = {
    "condinst": ("loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"),
    "blendmask": ("loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask",
                  "loss_basis_sem"),
}
# 64 px images, 4 iterations, evaluation at the end.
SIZE_OPTS = ('  opts: [INPUT.MIN_SIZE_TRAIN, "(64,)", INPUT.MAX_SIZE_TRAIN, 64, '
             "INPUT.MIN_SIZE_TEST, 64, INPUT.MAX_SIZE_TEST, 64]\n")


def _tiny_job(arch: str) -> str:
    job = TINY_JOB.replace("arch: mask_rcnn", f"arch: {arch}")
    job = job.replace(f"config: {REPO}/configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml",
                      f"config: {REPO}/{CONFIGS[arch]}\n{SIZE_OPTS}")
    return job.replace("max_iter: 6", "max_iter: 4")


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_two_workers_train_and_log_detectron2_losses(arch: str, workdir: Path) -> None:
    job = write_spec(workdir / "tiny.yaml", _tiny_job(arch))
    result = runner.invoke(app, ["submit", str(job)])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert run.data.params["spec.model.arch"] == arch and run.data.params["workers"] == "2"
    for name in LOSSES[arch]:
        history = client.get_metric_history(run.info.run_id, name)
        assert history, name
        assert all(math.isfinite(m.value) for m in history), name
    assert "segm/AP" in run.data.metrics
