"""A sweep trains every combination as child runs of one parent MLflow run."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import TINY_JOB, write_spec

SWEEP = TINY_JOB.replace("max_iter: 6", "max_iter: 2") + """
sweep:
  solver.reference_lr: [0.01, 0.02]
"""


def test_dry_run_plans_every_child(workdir: Path) -> None:
    job = write_spec(workdir / "sweep.yaml", SWEEP)
    result = CliRunner().invoke(app, ["submit", str(job), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.count("scaling plan: tiny") == 2
    assert "0.01 (reference 0.01)" in result.output and "0.02 (reference 0.02)" in result.output
    assert "sweep of 2 trainings" in result.output


def test_sweep_runs_children_under_one_parent(workdir: Path) -> None:
    job = write_spec(workdir / "sweep.yaml", SWEEP)
    result = CliRunner().invoke(app, ["submit", str(job), "resources.workers=1",
                                      "resources.ims_per_worker=2", "eval.enabled=false"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["sweep.solver.reference_lr"] == "[0.01, 0.02]"
    assert f"MLflow parent run id: {parent.info.run_id}" in result.output
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(float(r.data.params["base_lr"]) for r in children) == [0.01, 0.02]
    assert all(r.info.status == "FINISHED" for r in children)
    assert all("total_loss" in r.data.metrics for r in children)
    assert {r.info.run_name for r in children} == {
        "tiny[solver.reference_lr=0.01]", "tiny[solver.reference_lr=0.02]"}
