"""Two processes started at the same moment in a fresh folder: the sqlite MLflow store and the
synthetic dataset are created once, both processes finish, and no SQL reaches the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, TINY_JOB, write_spec

# What submit does first, through the same entry points: open (create) the store and the
# experiment, start a run, generate the dataset. Both processes wait for the same instant.
FIRST_USE = """
import os, sys, time
from pathlib import Path
from orchestrator.data.synth import ensure
from orchestrator.tracking.run import RunTracker, default_tracking_uri

Path(f".ready-{os.getpid()}").touch()  # imports done: wait for the other one
while len(list(Path(".").glob(".ready-*"))) < 2:
    time.sleep(0.01)
tracker = RunTracker.create(tracking_uri=default_tracking_uri(), experiment="orchestrator",
                            run_name="race", tags={})
tracker.finish("FINISHED")
made = ensure(Path(".orchestrator/datasets"), num_images=12, size=64, seed=1)
print("ok", tracker.run_id, made.root)
"""


def _together(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for cmd in commands]
    outputs = [p.communicate() for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out)
            for p, out in zip(procs, outputs, strict=True)]


def _no_sql(result: subprocess.CompletedProcess[str]) -> None:
    shown = result.stdout + result.stderr
    assert "[SQL" not in shown and "Traceback" not in shown and "sqlalchemy" not in shown, shown


def test_two_processes_create_the_store_and_the_dataset_once(workdir: Path) -> None:
    results = _together([[sys.executable, "-c", FIRST_USE]] * 2, workdir)
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
        _no_sql(result)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiments = client.search_experiments()
    assert [e.name for e in experiments if e.name != "Default"] == ["orchestrator"]
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    datasets = [p.name for p in (workdir / ".orchestrator/datasets").iterdir()
                if not p.name.endswith(".lock")]
    assert datasets == ["shapes-n12-s64-seed1"]


@pytest.mark.slow
def test_two_submits_started_together_in_a_fresh_folder_both_finish(workdir: Path) -> None:
    spec = write_spec(workdir / "tiny.yaml", TINY_JOB)
    submit = [sys.executable, "-m", "orchestrator", "submit", str(spec),
              "resources.workers=1"]
    results = _together([submit, submit], workdir)
    for result in results:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        _no_sql(result)
        assert "MLflow run id:" in result.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]


def test_a_store_that_cannot_open_and_mlflows_database_errors_show_no_sql(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    import sqlalchemy

    from orchestrator.errors import JobFailedError
    from orchestrator.tracking.store import open_store

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database" * 100)
    with pytest.raises(JobFailedError) as failed:
        open_store(f"sqlite:///{db}")  # also installs the filter on MLflow's loggers
    assert "cannot open the store" in str(failed.value) and "[SQL" not in str(failed.value)
    assert "file is not a database" in str(failed.value)
    # A failed statement as MLflow's session helper logs it (logger.exception, at ERROR).
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    logger = logging.getLogger("mlflow.store.db.utils")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("INSERT INTO runs VALUES (:secret)"),
                               {"secret": "s3cr3t"})
    except sqlalchemy.exc.OperationalError:
        logger.exception("SQLAlchemy database error. The following exception is caught.")
    finally:
        logger.removeHandler(handler)
        engine.dispose()
    shown = capsys.readouterr().err
    assert "no such table: runs" in shown and "database error" in shown, shown
    assert "[SQL" not in shown and "s3cr3t" not in shown and "Traceback" not in shown, shown
