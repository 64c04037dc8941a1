"""``run.storage_path`` in object storage (a real S3 API server on 127.0.0.1): a real embedded
submit uploads each checkpoint to the bucket, logs ``model_final.pth`` to MLflow, and keeps the
keys given in the URI out of everything it stores or prints; ``predict --checkpoint N`` reads a
checkpoint back from the bucket; a killed worker resumes from the bucket."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.launch.waiting import wait_until
from orchestrator.team.servers import REGION, Server, s3_storage_uri
from tests.conftest import TINY_JOB, write_spec
from tests.launch.test_fault_tolerance import logged_steps, worker_pid

# moto accepts any key: these stand for real ones, given in the URI, and must show up nowhere.
KEY, SECRET = "AKIAEMBEDDEDKEY00001", "embedded-s3-secret"


def _job(workdir: Path, *, max_iter: int, period: int) -> Path:
    spec = TINY_JOB.replace("max_iter: 6", f"max_iter: {max_iter}").replace(
        "checkpoint_period: 100", f"checkpoint_period: {period}").replace(
        "log_period: 2", "log_period: 1")
    return write_spec(workdir / "tiny.yaml", spec)


def _storage(server: Server, bucket: str, *, with_keys: bool = False) -> str:
    uri = s3_storage_uri(server.url, bucket, "ckpt")
    return uri.replace("s3://", f"s3://{KEY}:{SECRET}@") if with_keys else uri


def _client(server: Server):  # type: ignore[no-untyped-def]
    # Keys named: boto3's default session keeps the first ones it found (another test's).
    return boto3.client("s3", endpoint_url=server.url, region_name=REGION,
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])


def listed_checkpoints(s3, bucket: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The checkpoints Ray's snapshot in the bucket lists, oldest first: Ray lists one only
    once all of its files are uploaded (a folder in the bucket may still be uploading)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    found = [o["Key"] for page in pages for o in page.get("Contents", [])
             if o["Key"].endswith("/checkpoint_manager_snapshot.json")]
    if not found:
        return []
    body = s3.get_object(Bucket=bucket, Key=found[0])["Body"].read()
    return [c["checkpoint_dir_name"] for c in json.loads(body)["checkpoint_results"]]


def _checkpoint_keys(server: Server, bucket: str) -> dict[int, list[str]]:
    """Iteration -> the files of its checkpoint folder in the bucket."""
    s3 = _client(server)
    found: dict[int, list[str]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            match = re.search(r"/iter_(\d+)/(.+)$", obj["Key"])
            if match:
                found.setdefault(int(match.group(1)), []).append(match.group(2))
    return found


def _one_run(client: MlflowClient):  # type: ignore[no-untyped-def]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return runs[0]


def test_checkpoints_go_to_the_bucket_and_predict_reads_them_back(
        workdir: Path, s3_server: Server, s3_bucket: str) -> None:
    job = _job(workdir, max_iter=4, period=2)
    storage = _storage(s3_server, s3_bucket, with_keys=True)
    done = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(job),
                           f"run.storage_path={storage}"], cwd=workdir, capture_output=True,
                          text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    checkpoints = _checkpoint_keys(s3_server, s3_bucket)
    assert sorted(checkpoints) == [1, 3], checkpoints  # after iterations 2 and 4: one each
    assert all(files.count("model.pth") == 1 for files in checkpoints.values()), checkpoints

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = _one_run(client)
    assert run.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert "checkpoints/model_final.pth" in artifacts
    assert run.data.params["spec.run.storage_path"].startswith(f"s3://****@{s3_bucket}/ckpt?")

    # The keys were used (the URI's, not the environment's) and stored or printed nowhere.
    assert KEY not in output and SECRET not in output
    for path in workdir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in data and SECRET.encode() not in data, path

    # predict reads an earlier checkpoint from the bucket (keys from the environment).
    image = next((workdir / ".orchestrator").rglob("*.png"))
    result = CliRunner().invoke(app, ["predict", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db",
                                      "--run", run.info.run_id, str(image), "--out",
                                      str(workdir / "pred"), "--checkpoint", "1"])
    assert result.exit_code == 0, result.output
    assert (workdir / "pred" / image.name).is_file()
    result = CliRunner().invoke(app, ["predict", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db",
                                      "--run", run.info.run_id, str(image), "--checkpoint", "2"])
    assert result.exit_code == 2
    assert "an iteration with a checkpoint (1, 3)" in " ".join(result.output.split())


def test_a_killed_worker_resumes_from_the_bucket(workdir: Path, s3_server: Server,
                                                 s3_bucket: str) -> None:
    """Rank 1 is SIGKILLed once Ray lists the first checkpoint as uploaded (the 115 MB upload to
    moto takes several seconds, about 20 iterations here: 40 leave room for the kill)."""
    job = _job(workdir, max_iter=40, period=8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "submit", str(job), "run.max_failures=1",
         f"run.storage_path={_storage(s3_server, s3_bucket)}"],
        cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pid = wait_until(lambda: worker_pid(workdir), timeout=240, what="rank 1 never started")
        client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
        s3 = _client(s3_server)
        wait_until(lambda: listed_checkpoints(s3, s3_bucket), timeout=240,
                   what="no checkpoint uploaded")
        killed_at = max(logged_steps(client), default=-1)
        os.kill(pid, signal.SIGKILL)  # a real kill of a worker process
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert killed_at < 39, killed_at  # killed mid-run, or this test shows nothing
    run = _one_run(client)
    assert run.info.status == "FINISHED"
    steps = logged_steps(client)
    assert steps == sorted(set(steps)) and steps[-1] == 39, steps
    logs = "".join(p.read_text() for p in (workdir / ".orchestrator" / "output").glob("*/log.txt"))
    restored = re.findall(r"restored from Ray checkpoint at iteration (\d+)", logs)
    assert restored and int(restored[0]) in _checkpoint_keys(s3_server, s3_bucket), restored
    assert sorted(_checkpoint_keys(s3_server, s3_bucket)) == [7, 15, 23, 31, 39]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert "checkpoints/model_final.pth" in artifacts


@pytest.mark.slow
def test_a_multinode_cluster_gets_the_keys_through_env_from_only(
        workdir: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes started without any AWS variable, an S3 server that checks keys: the job's
    checkpoints land in the bucket because ``run.env_from`` carries the keys to the head's
    driver and to every worker, and nothing is read from a shared folder."""
    from tests.launch.s3_auth import BUCKET, start_guarded_s3
    from tests.launch.test_multinode import start_cluster

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    server, users = start_guarded_s3(tmp_path_factory.mktemp("s3-auth"))
    try:
        with start_cluster(2, tmp_path_factory.mktemp("cluster")) as cluster:
            for name, value in users["writer"].items():
                monkeypatch.setenv(name, value)  # here only: the nodes never had them
            job = _job(workdir, max_iter=4, period=2)
            args = ["submit", str(job), "--address", cluster.address, "eval.enabled=false",
                    f"tracking.tracking_uri=sqlite:///{workdir}/mlflow.db",
                    f"run.output_dir={workdir}/output",
                    f"run.storage_path={_storage(server, BUCKET)}"]
            without = CliRunner().invoke(app, args)  # the head's pre-flight finds no keys
            assert without.exit_code != 0
            assert "no S3 credentials are set" in " ".join(without.output.split())
            result = CliRunner().invoke(
                app, [*args, "run.env_from=[AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]"])
            assert result.exit_code == 0, result.output
        assert sorted(_checkpoint_keys(server, BUCKET)) == [1, 3]
        client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
        run = _one_run(client)
        assert run.info.status == "FINISHED"
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
        assert "checkpoints/model_final.pth" in artifacts
        assert users["writer"]["AWS_SECRET_ACCESS_KEY"] not in result.output
    finally:
        server.stop()
