"""Remote submission through the Ray Jobs API, against a real head started as a child process
(``ray start --head --block``, 127.0.0.1 only; stopped by signalling that process, never with
``ray stop``, which would kill every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import TINY_JOB, write_spec

runner = CliRunner()
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_jobs_api(address: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited with {proc.returncode}")
        try:
            JobSubmissionClient(address).list_jobs()
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
    raise TimeoutError(f"no Jobs API at {address} after {timeout}s")


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths are limited
    dashboard = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}",
           "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", "--include-dashboard=true", "--num-cpus=2",
           f"--temp-dir={temp}", "--disable-usage-stats",
           # Own ports throughout, so another Ray on this machine cannot take the agent's.
           *(f"--{name}={free_port()}" for name in (
               "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
               "metrics-export-port", "runtime-env-agent-port", "node-manager-port",
               "object-manager-port", "ray-client-server-port"))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_jobs_api(address, proc)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def test_submit_follows_the_job_to_the_end_and_tracks_it(head: str, workdir: Path) -> None:
    store = workdir / "mlflow.db"
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = runner.invoke(app, ["submit", str(job), "--address", head, "resources.workers=1",
                                 f"tracking.tracking_uri=sqlite:///{store}",
                                 "run.env={ORCHESTRATOR_TEST_MARK: remote}"])
    assert result.exit_code == 0, result.output
    assert "submitted tiny as Ray job" in result.output
    assert "scaling plan" in result.output  # the driver's output, streamed from the cluster
    assert "SUCCEEDED" in result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.params["spec.run.env.ORCHESTRATOR_TEST_MARK"] == "****"  # masked
    assert f"MLflow run id: {runs[0].info.run_id}" in result.output

    listed = runner.invoke(app, ["list", "--address", head])
    assert listed.exit_code == 0 and "SUCCEEDED" in listed.output and "tiny" in listed.output
    job_id = result.output.split("as Ray job ", 1)[1].split()[0]
    status = runner.invoke(app, ["status", job_id, "--address", head])
    assert status.exit_code == 0 and f"{job_id}: SUCCEEDED" in status.output
    logs = runner.invoke(app, ["logs", job_id, "--address", head])
    assert logs.exit_code == 0 and "scaling plan" in logs.output
    stop = runner.invoke(app, ["stop", job_id, "--address", head])
    assert stop.exit_code == 0 and "already finished" in stop.output


def test_detach_then_stop_marks_the_run_killed(head: str, workdir: Path) -> None:
    store = workdir / "mlflow.db"
    job = write_spec(workdir / "tiny.yaml", TINY_JOB.replace("max_iter: 6", "max_iter: 5000"))
    result = runner.invoke(app, ["submit", str(job), "--address", head, "--detach",
                                 "resources.workers=1", f"tracking.tracking_uri=sqlite:///{store}"])
    assert result.exit_code == 0, result.output
    job_id = result.output.split("as Ray job ", 1)[1].split()[0]
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(head)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # training is under way once progress lines appear
        if "\niter " in jobs.get_job_logs(job_id):
            break
        time.sleep(2)
    stop = runner.invoke(app, ["stop", job_id, "--address", head])
    logs = runner.invoke(app, ["logs", job_id, "--address", head]).output
    assert stop.exit_code == 0 and "stop requested" in stop.output, logs
    deadline = time.monotonic() + 60
    while jobs.get_job_status(job_id).value not in ("STOPPED", "FAILED", "SUCCEEDED"):
        assert time.monotonic() < deadline, "the job did not stop"
        time.sleep(1)
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"], logs


def test_unreachable_address_is_bad_input(workdir: Path) -> None:
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = runner.invoke(app, ["submit", str(job), "--address", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 2, result.output
    assert "no Ray Jobs API answers there" in result.output


def test_a_sweep_on_the_cluster_runs_its_children_at_once(head: str, workdir: Path) -> None:
    store = workdir / "mlflow.db"
    sweep = TINY_JOB.replace("max_iter: 6", "max_iter: 8") + (
        "sweep:\n  solver.reference_lr: [0.01, 0.02]\n")
    job = write_spec(workdir / "sweep.yaml", sweep)
    result = runner.invoke(app, ["submit", str(job), "--address", head, "resources.workers=1",
                                 "eval.enabled=false", f"tracking.tracking_uri=sqlite:///{store}"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if r.data.tags.get("sweep") == "true")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(r.info.status == "FINISHED" for r in children)
    spans = sorted((min(times), max(times)) for times in (
        [m.timestamp for m in client.get_metric_history(r.info.run_id, "total_loss")]
        for r in children))
    assert spans[1][0] < spans[0][1], spans  # the second trained while the first still did
