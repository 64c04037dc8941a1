"""The team's MLflow server (PostgreSQL store, artifacts proxied to S3) end to end: a real
submit, a sweep, an imported log, a comparison, predictions from the checkpoint downloaded
through the server, and no secret stored anywhere on the way."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.team.servers import REGION, S3_ENV, Server, postgres_bin
from tests.conftest import TINY_JOB, write_spec
from tests.launch.processes import start_submit

runner = CliRunner()
EXPERIMENT = "team-e2e"
PASSWORD = "hunter2-team-uri"  # in the tracking URI: http://alice:PASSWORD@127.0.0.1:PORT
AWS_SECRET = "hunter2-aws-secret"  # the job's AWS_SECRET_ACCESS_KEY (run.env_from)
SECRETS = (PASSWORD, AWS_SECRET)


@dataclass(frozen=True)
class Trained:
    workdir: Path
    output: str
    returncode: int
    run_id: str
    uri: str  # the credentialed URI the job used

    @property
    def metrics_json(self) -> Path:
        return next((self.workdir / ".orchestrator" / "output").glob("team-tiny-*/metrics.json"))


@pytest.fixture(scope="module")
def trained(team_tracking: Server, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One tiny real submit against the team server, shared by this module's tests."""
    workdir = tmp_path_factory.mktemp("team-e2e")
    write_spec(workdir / "tiny.yaml", TINY_JOB.replace("name: tiny", "name: team-tiny"))
    uri = team_tracking.url.replace("http://", f"http://alice:{PASSWORD}@")
    proc = start_submit(workdir, "tiny.yaml", f"tracking.tracking_uri={uri}",
                        f"tracking.experiment={EXPERIMENT}", "resources.workers=1",
                        "resources.ims_per_worker=2", "solver.max_iter=3",
                        "solver.warmup_iters=1",
                        "run.env_from=[AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]",
                        env={**S3_ENV, "AWS_SECRET_ACCESS_KEY": AWS_SECRET})
    try:
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    client = MlflowClient(team_tracking.url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, output
    (run,) = client.search_runs([experiment.experiment_id],
                                filter_string="attributes.run_name LIKE 'team-tiny%'")
    return Trained(workdir, output, proc.returncode, run.info.run_id, uri)


def _objects(s3_url: str, prefix: str = "") -> dict[str, bytes]:
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name=REGION,
                      aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket="team-mlflow", Prefix=prefix) for o in page.get("Contents", [])]
    return {key: s3.get_object(Bucket="team-mlflow", Key=key)["Body"].read() for key in keys}


def test_submit_finishes_with_metrics_and_the_model_in_the_bucket(
        trained: Trained, team_tracking: Server, s3_server: Server) -> None:
    assert trained.returncode == 0, trained.output
    run = MlflowClient(team_tracking.url).get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert {"total_loss", "lr", "segm/AP", "bbox/AP"} <= set(run.data.metrics)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    stored = _objects(s3_server.url, f"mlflow/{run.info.experiment_id}/{trained.run_id}/")
    artifacts = f"mlflow/{run.info.experiment_id}/{trained.run_id}/artifacts/"
    for name in ("checkpoints/model_final.pth", "job.yaml", "metrics.json"):
        assert artifacts + name in stored, sorted(stored)
    assert len(stored[artifacts + "checkpoints/model_final.pth"]) > 1_000_000
    assert not (trained.workdir / "mlruns").exists()  # nothing of the run kept locally


def test_predict_downloads_the_checkpoint_through_the_server(trained: Trained,
                                                             tmp_path: Path) -> None:
    assert trained.returncode == 0, trained.output
    image = sorted((trained.workdir / ".orchestrator" / "datasets").glob("*/val/*.png"))[0]
    result = runner.invoke(app, ["predict", "--run", trained.run_id, "--tracking-uri",
                                 trained.uri, str(image), "--out", str(tmp_path / "out"),
                                 "--score", "0.0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / image.name).is_file()
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert predictions["images"][0]["file_name"] == str(image)
    assert PASSWORD not in result.output


def test_import_and_compare_with_a_plot(trained: Trained, team_tracking: Server,
                                        tmp_path: Path) -> None:
    """The job's own detectron2 metrics.json, imported as a run, beside the trained run."""
    assert trained.returncode == 0, trained.output
    # The job's batch (1 worker x 2) and reference batch (2): the same step axis as the run.
    imported = runner.invoke(app, ["runs", "import", str(trained.metrics_json), "--name",
                                   "team-imported", "--experiment", EXPERIMENT,
                                   "--tracking-uri", team_tracking.url,
                                   "--batch", "2", "--reference-batch", "2"])
    assert imported.exit_code == 0, imported.output
    run_id = imported.output.strip().splitlines()[-1]
    client = MlflowClient(team_tracking.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["source_format"] == "detectron2"
    steps = [m.step for m in client.get_metric_history(run_id, "total_loss")]
    assert steps == [m.step for m in client.get_metric_history(trained.run_id, "total_loss")]
    plot = tmp_path / "compare.png"
    compared = runner.invoke(app, ["runs", "compare", trained.run_id, "team-imported",
                                   "--tracking-uri", team_tracking.url, "--plot", str(plot)],
                             env={"COLUMNS": "200"})
    assert compared.exit_code == 0, compared.output
    assert "team-imported" in compared.output and "total_loss" in compared.output
    assert plot.stat().st_size > 10_000


def test_secrets_are_stored_nowhere(trained: Trained, team_tracking: Server, s3_server: Server,
                                    postgres_server: Server) -> None:
    """The URI's password and the AWS secret: not in what submit printed, the run's files,
    its params and tags, its artifacts in the bucket, the database, or the server's log."""
    assert trained.returncode == 0, trained.output
    run = MlflowClient(team_tracking.url).get_run(trained.run_id)
    assert run.data.params["spec.tracking.tracking_uri"].startswith("http://****@127.0.0.1:")
    assert run.data.params["spec.run.env_from"] == "['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']"
    places = {"submit output": trained.output.encode(),
              "params and tags": json.dumps([run.data.params, run.data.tags]).encode(),
              "MLflow server log": Path(team_tracking.log).read_bytes()}
    places |= {str(p): p.read_bytes() for p in trained.workdir.rglob("*") if p.is_file()}
    objects = _objects(s3_server.url, f"mlflow/{run.info.experiment_id}/{trained.run_id}/")
    assert len(objects) >= 4
    places |= {f"s3://team-mlflow/{key}": body for key, body in objects.items()}
    pg_dump = postgres_bin() / "pg_dump"  # type: ignore[operator]
    dump = subprocess.run([str(pg_dump), "-h", "127.0.0.1", "-p", str(postgres_server.port),
                           "-U", "postgres", "mlflow"], capture_output=True, check=True)
    assert trained.run_id.encode() in dump.stdout  # the run is in this database
    places["the PostgreSQL database"] = dump.stdout
    assert any(p.endswith("log.txt") for p in places)
    for where, data in places.items():
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} in {where}"


SWEEP = TINY_JOB.replace("name: tiny", "name: team-sweep").replace("max_iter: 6", "max_iter: 2")
SWEEP += "sweep:\n  solver.reference_lr: [0.01, 0.02]\n"


def test_sweep_children_under_one_parent(team_tracking: Server, workdir: Path) -> None:
    job = write_spec(workdir / "sweep.yaml", SWEEP)
    result = runner.invoke(app, ["submit", str(job), f"tracking.tracking_uri={team_tracking.url}",
                                 f"tracking.experiment={EXPERIMENT}-sweep", "resources.workers=1",
                                 "resources.ims_per_worker=2", "eval.enabled=false"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(team_tracking.url)
    experiment = client.get_experiment_by_name(f"{EXPERIMENT}-sweep")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert parent.info.status == "FINISHED"
    assert f"MLflow parent run id: {parent.info.run_id}" in result.output
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(float(r.data.params["base_lr"]) for r in children) == [0.01, 0.02]
    assert all(r.info.status == "FINISHED" and "total_loss" in r.data.metrics for r in children)


@pytest.mark.slow
def test_the_ui_compare_page_of_the_team_server(trained: Trained, team_tracking: Server,
                                                tmp_path: Path) -> None:
    """The team server's own UI (no `orchestrator ui`): the trained run and an imported one
    side by side in a real headless browser."""
    from orchestrator.tracking.importer import import_log
    from orchestrator.tracking.ui import compare_url
    from tests.tracking.test_ui import chromium, need_chromium

    assert trained.returncode == 0, trained.output
    browser = need_chromium()
    imported = import_log(trained.metrics_json, tracking_uri=team_tracking.url,
                          experiment=EXPERIMENT, run_name="team-ui-imported", batch=2,
                          reference_batch=2)
    client = MlflowClient(team_tracking.url)
    run = client.get_run(trained.run_id)
    url = compare_url(team_tracking.url, [trained.run_id, imported], [run.info.experiment_id])
    dom = chromium(browser, tmp_path / "profile", "--dump-dom", url)
    assert "Comparing 2 Runs" in dom
    # The metric table lists the first rows by name only (the runs have ~40 metrics each).
    for text in (run.info.run_name, "team-ui-imported", "bbox/AP", "eval/seconds"):
        assert re.search(rf">\s*{re.escape(text)}\s*<", dom), f"{text} not shown on {url}"
