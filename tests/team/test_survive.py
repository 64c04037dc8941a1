"""A run on the local multi-node cluster with its checkpoints in S3 and its tracking on the team
server (PostgreSQL, artifacts in S3) survives losing every node at once, and S3 outages during a
checkpoint upload. Each trains a tiny model for 72 iterations on 1-CPU nodes: ``slow``.

The job is submitted with ``--address`` (its driver runs on the head, as on a cloud cluster),
so losing the head takes the driver with it: the run is left RUNNING with its driver gone, and
``submit --resume`` takes it over on a new cluster. Each test has an S3 server of its own, which
it pauses (SIGSTOP/SIGCONT) to cut uploads off without losing the bucket.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.launch.local_cluster import NODE_ENV, ClusterProcess
from orchestrator.launch.waiting import wait_until
from orchestrator.team.servers import (
    REGION,
    S3_ENV,
    Server,
    create_bucket,
    s3_storage_uri,
    start_s3,
)
from tests.conftest import TINY_JOB, write_spec
from tests.launch.test_multinode import start_cluster
from tests.launch.test_multinode_faults import finish, worker_logs
from tests.launch.test_s3_storage import listed_checkpoints

pytestmark = pytest.mark.slow

# 72 iterations (about 0.45 s each here), a checkpoint every 24 (iterations 23, 47, 71): a
# period (about 11 s) longer than one upload of the 115 MB checkpoint to moto (about 7 s with
# the nodes training on the same cores). The redone-work bound holds only then: Ray uploads
# one checkpoint at a time.
ITERATIONS, PERIOD = 72, 24
FIRST, SECOND = f"iter_{PERIOD - 1:07d}", f"iter_{2 * PERIOD - 1:07d}"
JOB = TINY_JOB.replace("max_iter: 6", f"max_iter: {ITERATIONS}").replace(
    "checkpoint_period: 100", f"checkpoint_period: {PERIOD}").replace("log_period: 2",
                                                                     "log_period: 1")
OUTAGE_S = 20


class Team:
    """One test's S3 server and bucket, and its experiment on the team tracking server."""

    def __init__(self, store: Server, tracking: Server, workdir: Path) -> None:
        self.store = store
        self.tracking_uri = tracking.url
        self.workdir = workdir
        self.bucket = f"survive-{uuid.uuid4().hex[:8]}"
        self.experiment = f"survive-{uuid.uuid4().hex[:8]}"
        create_bucket(store.url, self.bucket)
        self.s3 = boto3.client("s3", endpoint_url=store.url, region_name=REGION,
                               aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
        self.client = MlflowClient(tracking_uri=tracking.url)

    def submit(self, cluster: ClusterProcess, job: Path, *extra: str) -> subprocess.Popen[str]:
        """``submit --address``: the driver runs on the head. The nodes have no credentials:
        they reach the workers through ``run.env_from``, as on a real cluster."""
        env = {**os.environ, **NODE_ENV, **S3_ENV, "PYTHONUNBUFFERED": "1"}
        storage = s3_storage_uri(self.store.url, self.bucket, "runs")
        args = ["--address", cluster.address, f"tracking.tracking_uri={self.tracking_uri}",
                f"tracking.experiment={self.experiment}", f"run.storage_path={storage}",
                f"run.output_dir={self.workdir}/output", "eval.enabled=false",
                "run.env_from=[AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY]"]
        return subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", str(job),
                                 *args, *extra], cwd=self.workdir, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def run(self):  # type: ignore[no-untyped-def]
        experiment = self.client.get_experiment_by_name(self.experiment)
        runs = self.client.search_runs([experiment.experiment_id]) if experiment else []
        return runs[0] if len(runs) == 1 else None

    def steps(self) -> list[tuple[int, int]]:
        """(step, timestamp ms) of every total_loss the run logged, by step."""
        run = self.run()
        if run is None:
            return []
        return sorted((m.step, m.timestamp)
                      for m in self.client.get_metric_history(run.info.run_id, "total_loss"))

    def last_step(self) -> int:
        return max((s for s, _ in self.steps()), default=-1)

    def checkpoints(self) -> list[str]:
        """The checkpoints Ray's snapshot lists as complete, oldest first (none: [])."""
        return listed_checkpoints(self.s3, self.bucket)

    def keys(self) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def team(workdir: Path, team_tracking: Server, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Team]:
    for key in S3_ENV:  # the nodes start without credentials
        monkeypatch.delenv(key, raising=False)
    store = start_s3(tmp_path)
    try:
        yield Team(store, team_tracking, workdir)
    finally:
        os.kill(store.pid, signal.SIGCONT)
        store.stop()


def restored(workdir: Path) -> list[int]:
    marker = "restored from Ray checkpoint at iteration "
    return [int(line.split(marker)[1].split()[0]) for line in worker_logs(workdir).splitlines()
            if marker in line]


def iteration(checkpoint: str) -> int:
    return int(checkpoint.removeprefix("iter_"))


def lose_every_node(team: Team, job: Path, tmp_path_factory: pytest.TempPathFactory,
                    before_loss) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """Train on a 2-node cluster until ``before_loss(team)`` says so, then SIGKILL every node
    at once; returns the run id and the last step MLflow had."""
    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as cluster:
        proc = team.submit(cluster, job)
        try:
            before_loss(team)
            assert cluster.kill_every_node()
        finally:
            finish(proc, timeout=300)
    run = team.run()
    assert run is not None and run.info.status == "RUNNING"  # its driver died with the head
    return run.info.run_id, team.last_step()


def resume(team: Team, job: Path, run_id: str,
           tmp_path_factory: pytest.TempPathFactory) -> str:
    """``submit --resume`` on a new 2-node cluster; asserts the run ends FINISHED with every
    step logged once, and returns the submit's output."""
    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as fresh:
        again = team.submit(fresh, job, "--resume", run_id)
        output = finish(again)
    assert again.returncode == 0, output
    assert "was left RUNNING" in output, output
    run = team.run()
    assert run is not None and run.info.status == "FINISHED" and run.info.run_id == run_id
    steps = [s for s, _ in team.steps()]
    assert steps == list(range(ITERATIONS)), steps  # every step once, none twice
    assert team.checkpoints()[-1] == f"iter_{ITERATIONS - 1:07d}"
    final = [a.path for a in team.client.list_artifacts(run_id, "checkpoints")]
    assert final == ["checkpoints/model_final.pth"]  # through the server, into its bucket
    return output


def test_losing_every_node_resumes_from_the_object_store_in_the_same_run(
        team: Team, tmp_path_factory: pytest.TempPathFactory) -> None:
    job = write_spec(team.workdir / "tiny.yaml", JOB)

    def first_checkpoint_stored(team: Team) -> None:
        wait_until(team.checkpoints, timeout=600, what="no checkpoint in the bucket")

    run_id, before = lose_every_node(team, job, tmp_path_factory, first_checkpoint_stored)
    latest = iteration(team.checkpoints()[-1])
    assert before < ITERATIONS - 1
    resume(team, job, run_id, tmp_path_factory)
    # Both ranks load the newest complete checkpoint in the bucket.
    assert restored(team.workdir) == [latest, latest]
    assert before - latest <= PERIOD  # at most one checkpoint period trained again


def test_a_checkpoint_whose_upload_was_cut_off_is_not_resumed_from(
        team: Team, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The S3 server stops answering (SIGSTOP) once the first checkpoint (iteration 23) is
    stored, and the whole cluster is lost while the second's upload hangs: the run resumes
    from the first."""
    job = write_spec(team.workdir / "tiny.yaml", JOB)

    def upload_in_flight(team: Team) -> None:
        wait_until(team.checkpoints, timeout=600, what="no checkpoint before the outage")
        os.kill(team.store.pid, signal.SIGSTOP)
        wait_until(lambda: team.last_step() >= 2 * PERIOD, timeout=300,
                   what="training stopped during the S3 outage")

    try:
        run_id, _ = lose_every_node(team, job, tmp_path_factory, upload_in_flight)
    finally:
        os.kill(team.store.pid, signal.SIGCONT)
    assert team.checkpoints() == [FIRST]
    # What a cut-off upload can leave (a store that shows objects before they are whole): a
    # newer checkpoint folder with a truncated model. Only the snapshot counts.
    stored = next(k for k in team.keys() if k.endswith(f"{FIRST}/model.pth"))
    head = team.s3.get_object(Bucket=team.bucket, Key=stored, Range="bytes=0-999")
    team.s3.put_object(Bucket=team.bucket, Key=stored.replace(FIRST, SECOND),
                       Body=head["Body"].read())
    resume(team, job, run_id, tmp_path_factory)
    assert restored(team.workdir) == [PERIOD - 1, PERIOD - 1]


def test_a_short_s3_outage_during_an_upload_is_retried(
        team: Team, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The S3 server stops answering for OUTAGE_S (20 s) from when the first checkpoint is
    stored, so the second's upload hangs: it is retried and the run finishes with no restart
    (run.max_failures is 0)."""
    job = write_spec(team.workdir / "tiny.yaml", JOB)
    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as cluster:
        proc = team.submit(cluster, job)
        try:
            wait_until(team.checkpoints, timeout=600, what="no checkpoint before the outage")
            os.kill(team.store.pid, signal.SIGSTOP)
            paused = time.monotonic()
            try:
                wait_until(lambda: team.last_step() >= 2 * PERIOD, timeout=300,
                           what="training stopped during the S3 outage")
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - paused)))
            finally:
                os.kill(team.store.pid, signal.SIGCONT)
        finally:
            output = finish(proc)
    assert proc.returncode == 0, output
    run = team.run()
    assert run is not None and run.info.status == "FINISHED"
    assert [s for s, _ in team.steps()] == list(range(ITERATIONS))
    assert team.checkpoints() == [f"iter_{i:07d}" for i in range(PERIOD - 1, ITERATIONS, PERIOD)]
    assert restored(team.workdir) == []  # never restarted
