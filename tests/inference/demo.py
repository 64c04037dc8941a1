"""One tiny real training per test session, shared by the inference and visualize tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import TINY_JOB, write_spec

__all__ = ["DemoRun", "demo_run"]

MAX_ITER = 3
VISUALIZE = 2


@dataclass(frozen=True)
class DemoRun:
    """A FINISHED run trained through the CLI, and where its files are."""

    workdir: Path
    run_id: str
    tracking_uri: str
    val_dir: Path

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)


def _train(workdir: Path) -> DemoRun:
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    before = Path.cwd()
    os.chdir(workdir)
    try:
        result = CliRunner().invoke(app, [
            "submit", str(job), "resources.workers=1", "resources.ims_per_worker=2",
            f"solver.max_iter={MAX_ITER}", "solver.warmup_iters=1", "eval.score_thresh=0.0",
            f"eval.visualize={VISUALIZE}"])
    finally:
        os.chdir(before)
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    val_dir = next((workdir / ".orchestrator" / "datasets").glob("*/val"))
    return DemoRun(workdir=workdir, run_id=runs[0].info.run_id, tracking_uri=uri,
                   val_dir=val_dir)


_TRAINED: dict[str, DemoRun] = {}


def demo_run(factory: pytest.TempPathFactory) -> DemoRun:
    """The session's demo run, trained on first use (about a minute on 2 cores)."""
    if "run" not in _TRAINED:
        _TRAINED["run"] = _train(factory.mktemp("demo-run"))
    return _TRAINED["run"]
