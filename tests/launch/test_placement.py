"""Nothing waits silently: workers a fixed cluster can never hold are refused before
submission (exit 2, the numbers named); workers that wait for room are reported every
REPORT_S and fail the run after ``run.pending_timeout_s`` (exit 1, the run FAILED)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.launch.local_cluster import NODE_ENV, ClusterProcess
from orchestrator.launch.placement import placement_problem
from orchestrator.spec import load_spec
from tests.conftest import REPO, TINY_JOB, write_spec
from tests.launch.test_multinode import job_args, said, start_cluster

runner = CliRunner()


def test_placement_problem_names_the_worker_and_the_nodes(workdir: Path) -> None:
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    spec = load_spec(job, ["resources.workers=3", "resources.cpus_per_worker=2"])
    nodes = [{"CPU": 4.0}, {"CPU": 2.0, "GPU": 1.0}]
    assert placement_problem(spec, nodes, "here") is None  # 2 + 1 workers fit
    small = placement_problem(spec, [{"CPU": 1.0}, {"CPU": 1.0}], "here")
    assert small and "one worker needs 2 CPU" in small and "[1 CPU], [1 CPU]" in small
    few = placement_problem(spec, [{"CPU": 2.0}, {"CPU": 3.0}], "here")
    assert few and "3 workers x 2 CPU need 6 CPU" in few and "room for 2 worker(s)" in few
    gpus = load_spec(job, ["resources.workers=2", "resources.gpus_per_worker=1"])
    assert "0 GPU" in (placement_problem(gpus, nodes, "here") or "")
    assert placement_problem(gpus, nodes + [{"CPU": 8.0, "GPU": 4.0}], "here") is None


@pytest.fixture(scope="module")
def two_small_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.mark.slow
def test_workers_no_node_can_hold_are_refused_before_submission(
        workdir: Path, two_small_nodes: ClusterProcess) -> None:
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    # A job that got through anyway must not wait 900 s: it fails, and so does the test.
    args = ["submit", str(job), *job_args(workdir, two_small_nodes), "run.pending_timeout_s=60"]
    big = runner.invoke(app, [*args, "resources.cpus_per_worker=2"])
    assert big.exit_code == 2, big.output
    assert "one worker needs 2 CPU but no node" in said(big) and "[1 CPU], [1 CPU]" in said(big)
    many = runner.invoke(app, [*args, "resources.workers=3"])
    assert many.exit_code == 2, many.output
    assert "3 workers x 1 CPU need 3 CPU" in said(many) and "2 CPU in all" in said(many)
    assert "submitted" not in big.output + many.output
    assert not (workdir / "mlflow.db").exists()  # no run was opened


BLOCKER = """
import sys, time, ray
ray.init(address=sys.argv[1])
@ray.remote(num_cpus=1)
class Hold:
    def ready(self): return True
h = Hold.remote()
ray.get(h.ready.remote())
print("holding", flush=True)
time.sleep(3600)
"""


@pytest.mark.slow
def test_workers_waiting_for_room_are_reported_then_the_run_fails(
        workdir: Path, two_small_nodes: ClusterProcess) -> None:
    env = {**os.environ, **NODE_ENV, "PYTHONPATH": str(REPO)}
    blocker = subprocess.Popen([sys.executable, "-c", BLOCKER, two_small_nodes.gcs_address],
                               env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert blocker.stdout is not None and blocker.stdout.readline().strip() == "holding"
        job = write_spec(workdir / "tiny.yaml", TINY_JOB)
        result = runner.invoke(app, ["submit", str(job), *job_args(workdir, two_small_nodes),
                                     "eval.enabled=false", "run.pending_timeout_s=30"])
    finally:
        blocker.kill()
        blocker.wait(timeout=60)
        if blocker.stdout is not None:
            blocker.stdout.close()
    text = said(result)
    assert result.exit_code == 1, result.output
    assert "waiting for the cluster to place 2 workers x 1 CPU: 1/2 CPU free" in text, text
    assert "did not place the workers within run.pending_timeout_s" in text, text
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "total_loss" not in runs[0].data.metrics
