"""A worker process killed mid-training: Ray restarts the group, training resumes from the last
checkpoint, and the one MLflow run ends FINISHED with every step logged exactly once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.launch.waiting import wait_until
from tests.conftest import TINY_JOB, write_spec


def worker_pid(workdir: Path) -> int | None:
    for log in (workdir / ".orchestrator" / "output").glob("*/log.txt.rank1"):
        found = re.search(r"rank 1/2 \(pid (\d+)\) starts training", log.read_text())
        if found:
            return int(found.group(1))
    return None


def logged_steps(client: MlflowClient) -> list[int]:
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    if not runs:
        return []
    return [m.step for m in client.get_metric_history(runs[0].info.run_id, "total_loss")]


def test_a_killed_worker_resumes_without_lost_or_duplicated_steps(workdir: Path) -> None:
    spec = TINY_JOB.replace("max_iter: 6", "max_iter: 16").replace(
        "checkpoint_period: 100", "checkpoint_period: 4").replace("log_period: 2", "log_period: 1")
    job = write_spec(workdir / "tiny.yaml", spec)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "submit", str(job), "run.max_failures=1"],
        cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pid = wait_until(lambda: worker_pid(workdir), timeout=240, what="rank 1 never started")
        client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
        wait_until(lambda: max(logged_steps(client), default=-1) >= 5, timeout=240,
                   what="no progress")
        os.kill(pid, signal.SIGKILL)  # a real kill of a worker process, not an exception
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = logged_steps(client)
    assert steps == sorted(set(steps)) and steps[-1] == 15, steps
    logs = "".join(p.read_text() for p in (workdir / ".orchestrator" / "output").glob("*/log.txt"))
    assert "restored from Ray checkpoint at iteration" in logs


def test_an_interrupted_run_resumes_into_the_same_mlflow_run(workdir: Path) -> None:
    spec = TINY_JOB.replace("max_iter: 6", "max_iter: 14").replace(
        "checkpoint_period: 100", "checkpoint_period: 4").replace("log_period: 2", "log_period: 1")
    job = write_spec(workdir / "tiny.yaml", spec)
    cmd = [sys.executable, "-m", "orchestrator", "submit", str(job)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    wait_until(lambda: worker_pid(workdir), timeout=240, what="training never started")
    wait_until(lambda: max(logged_steps(client), default=-1) >= 8, timeout=240, what="no progress")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert run.info.status == "KILLED"

    second = subprocess.run([*cmd, "--resume", run.info.run_id], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["resumed"] == "true"
    steps = logged_steps(client)
    assert steps == sorted(set(steps)) and steps[-1] == 13, steps


def test_resume_of_an_unknown_run_is_bad_input(workdir: Path) -> None:
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(job),
                             "--resume", "0" * 32], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 2
    assert "no such MLflow run" in result.stderr
