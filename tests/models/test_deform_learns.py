"""The deformable BlendMask demo learns as well as the plain one (two full demo runs on 2 CPU
workers, several minutes each, hence ``slow``). bench/models_learn.py prints the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import REPO


@pytest.mark.slow
def test_deformable_demo_reaches_the_plain_demos_segm_ap(workdir: Path) -> None:
    runner = CliRunner()
    for job in ("demo-blendmask", "demo-blendmask-dcn"):
        result = runner.invoke(app, ["submit", str(REPO / "jobs" / f"{job}.yaml"),
                                     f"tracking.run_name={job}"])
        assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs)
    ap = {r.info.run_name: r.data.metrics.get("segm/AP", 0.0) for r in runs}
    ap = {k: 0.0 if v != v else v for k, v in ap.items()}  # NaN: no detections at all
    assert ap["demo-blendmask-dcn"] >= ap["demo-blendmask"] - 5.0, ap
    assert ap["demo-blendmask-dcn"] > 30.0, ap
