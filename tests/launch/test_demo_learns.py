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


def _metrics(workdir: Path, experiment: str) -> dict[str, dict[str, float]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {r.info.run_name: {k: 0.0 if v != v else v for k, v in r.data.metrics.items()}
            for r in runs}


@pytest.mark.slow
def test_panoptic_demo_learns_stuff_and_keeps_instance_ap(workdir: Path) -> None:
    """jobs/demo-blendmask-panoptic.yaml as shipped: PQ well above an untrained model's, and
    instance segm AP within 5 points of the plain BlendMask demo (same solver and data size)."""
    runner = CliRunner()
    panoptic = str(REPO / "jobs" / "demo-blendmask-panoptic.yaml")
    for args in ([panoptic, "solver.max_iter=1", "solver.steps=[]",
                  "tracking.run_name=untrained"],
                 [panoptic, "tracking.run_name=panoptic"],
                 [str(REPO / "jobs" / "demo-blendmask.yaml"), "tracking.run_name=plain"]):
        result = runner.invoke(app, ["submit", *args])
        assert result.exit_code == 0, result.output
    runs = _metrics(workdir, "demo")
    pq = {name: m.get("panoptic_seg/PQ", 0.0) for name, m in runs.items()}
    ap = {name: m.get("segm/AP", 0.0) for name, m in runs.items()}
    parts = ("panoptic_seg/PQ_th", "panoptic_seg/PQ_st", "sem_seg/mIoU")
    print(f"PQ {pq}\nsegm AP {ap}\n" + ", ".join(f"{k} {runs['panoptic'].get(k)}" for k in parts))
    assert pq["panoptic"] > pq["untrained"] + 40.0, pq
    assert ap["panoptic"] > ap["plain"] - 5.0, ap
