"""jobs/demo.yaml as shipped: it must learn (minutes on 2 cores, hence ``slow``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import REPO


@pytest.mark.slow
def test_demo_job_beats_an_untrained_model(workdir: Path) -> None:
    runner = CliRunner()
    job = str(REPO / "jobs" / "demo.yaml")
    untrained = runner.invoke(app, ["submit", job, "solver.max_iter=1", "solver.steps=[]",
                                    "tracking.run_name=untrained"])
    assert untrained.exit_code == 0, untrained.output
    trained = runner.invoke(app, ["submit", job, "tracking.run_name=trained"])
    assert trained.exit_code == 0, trained.output
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    ap = {r.info.run_name: r.data.metrics.get("segm/AP", 0.0) for r in runs}
    ap = {k: 0.0 if v != v else v for k, v in ap.items()}  # NaN: no detections at all
    assert ap["trained"] > 30.0 > ap["untrained"] + 20.0, ap
