"""MLflow stores for the tracking tests, built once per session (a fresh sqlite store costs ~5 s
of schema migrations on this machine) and copied where a test writes."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REFERENCE_LOGS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "reference_logs"
D2_LOG = REFERENCE_LOGS / "detectron2_mask_rcnn_R_50_FPN_1x.metrics.json"
MMDET_LOG = REFERENCE_LOGS / "mmdet_mask_rcnn_r50_fpn_1x.log.json"


def need_reference_logs() -> None:
    if not (D2_LOG.is_file() and MMDET_LOG.is_file()):
        pytest.skip(f"reference logs not found in {REFERENCE_LOGS} (clone shared/ beside the "
                    "repository)")


@dataclass(frozen=True)
class Populated:
    """A store holding two runs of ours and the two imported reference logs."""

    uri: str
    w2: str
    w4: str
    d2: str
    mmdet: str
    experiment_id: str


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates the schema
    return db


@pytest.fixture
def store(empty_store: Path, workdir: Path) -> str:
    """A fresh, empty store in the test's working directory (artifacts in ./mlruns)."""
    shutil.copy(empty_store, workdir / "mlflow.db")
    return f"sqlite:///{workdir / 'mlflow.db'}"


def log_run(uri: str, name: str, *, workers: int, experiment: str = "orchestrator") -> str:
    """A small stand-in for a submitted run: plan params, losses each 10 iters, two evals."""
    from mlflow.entities import Metric, Param

    from orchestrator.tracking.run import RunTracker

    tracker = RunTracker.create(tracking_uri=uri, experiment=experiment, run_name=name,
                                tags={"model": "mask_rcnn", "workers": str(workers)})
    params = {"workers": str(workers), "base_lr": str(0.01 * workers), "max_iter": "100"}
    metrics = [Metric("total_loss", 2.0 / (i + 1) + workers / 10, 0, i * 10) for i in range(10)]
    metrics += [Metric("segm/AP", 10.0 + workers * i, 0, 49 + 50 * i) for i in range(2)]
    metrics += [Metric("bbox/AP", 12.0 + workers * i, 0, 49 + 50 * i) for i in range(2)]
    metrics.append(Metric("segm/AP", 11.0, 0, 120))  # final below its best
    tracker.client.log_batch(tracker.run_id, metrics=metrics,
                             params=[Param(k, v) for k, v in params.items()])
    tracker.finish("FINISHED")
    return tracker.run_id


@pytest.fixture(scope="session")
def populated(empty_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Populated:
    """Read-only for the tests that use it: two runs of ours plus the two reference logs."""
    from orchestrator.tracking.importer import import_log

    need_reference_logs()
    db = tmp_path_factory.mktemp("populated") / "mlflow.db"
    shutil.copy(empty_store, db)
    uri = f"sqlite:///{db}"
    w2, w4 = log_run(uri, "w2", workers=2), log_run(uri, "w4", workers=4)
    d2 = import_log(D2_LOG, tracking_uri=uri, experiment="orchestrator")
    mmdet = import_log(MMDET_LOG, tracking_uri=uri, experiment="orchestrator")
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name("orchestrator")
    return Populated(uri=uri, w2=w2, w4=w4, d2=d2, mmdet=mmdet,
                     experiment_id=experiment.experiment_id)
