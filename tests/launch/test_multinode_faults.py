"""Faults on a real multi-node Ray on this machine: a worker node lost, a worker hung inside a
collective, the head lost. Each trains a tiny model for a few dozen iterations on 1-CPU nodes,
so they are ``slow``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.launch.local_cluster import NODE_ENV, ClusterProcess
from orchestrator.launch.waiting import wait_until
from tests.conftest import TINY_JOB, write_spec
from tests.launch.test_multinode import job_args, start_cluster, starts

pytestmark = pytest.mark.slow

LONGER = TINY_JOB.replace("max_iter: 6", "max_iter: 16").replace(
    "checkpoint_period: 100", "checkpoint_period: 4").replace("log_period: 2", "log_period: 1")
# Growing needs time after the first checkpoint: a node to start (Ray saw one here 15-20 s
# after it was added) and a resize check to fire.
LONGEST = LONGER.replace("max_iter: 16", "max_iter: 32")


def client_for(workdir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")


def the_run(client: MlflowClient):  # type: ignore[no-untyped-def]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return runs[0] if len(runs) == 1 else None


def history(client: MlflowClient, key: str) -> list[tuple[int, float, int]]:
    """(step, value, timestamp ms) of one metric of the only run, by step."""
    run = the_run(client)
    if run is None:
        return []
    return sorted((m.step, m.value, m.timestamp)
                  for m in client.get_metric_history(run.info.run_id, key))


def last_step(client: MlflowClient) -> int:
    return max((s for s, _, _ in history(client, "total_loss")), default=-1)


def submit(workdir: Path, cluster: ClusterProcess, job: Path, *overrides: str,
           remote: bool = True) -> subprocess.Popen[str]:
    """``orchestrator submit`` in a child process: through the Jobs API (the driver runs on
    the head), or with ``remote=False`` as a driver on this machine joining the cluster."""
    env = {**os.environ, **NODE_ENV, "PYTHONUNBUFFERED": "1"}
    args = job_args(workdir, cluster)
    if not remote:
        env["RAY_ADDRESS"] = cluster.gcs_address
        args = args[2:]
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", str(job), *args,
                             *overrides], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[str], timeout: float = 900) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return output


def worker_logs(workdir: Path) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in sorted((workdir / "output").glob("*/log.txt*")))


def test_losing_a_worker_node_continues_on_what_is_left(workdir: Path,
                                                        tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    job = write_spec(workdir / "tiny.yaml", LONGER)
    client = client_for(workdir)
    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as cluster:
        proc = submit(workdir, cluster, job, "resources.workers=[1,2]", "run.max_failures=1",
                      "eval.enabled=false")
        try:
            wait_until(lambda: last_step(client) >= 5, timeout=600,
                       what="no progress before the kill")
            killed = cluster.kill_node("worker-1")
            assert killed
        finally:
            output = finish(proc)
    assert proc.returncode == 0, output
    run = the_run(client)
    assert run is not None and run.info.status == "FINISHED"
    steps = [s for s, _, _ in history(client, "total_loss")]
    # 16 iterations x 2 images planned = 32 images; steps count iterations at the reference
    # batch 2 whatever the batch: the last is 15 (iteration 31 at batch 1), none missing.
    assert steps == list(range(16)), steps
    assert [v for s, v, _ in history(client, "iteration") if s == 15] == [31.0]
    assert [v for _, v, _ in history(client, "plan/workers")] == [2.0, 1.0]
    assert [v for _, v, _ in history(client, "plan/max_iter")] == [16.0, 32.0]
    assert [v for _, v, _ in history(client, "plan/base_lr")] == [0.01, 0.005]
    logs = worker_logs(workdir)
    assert "checkpoint was written at batch 2, training goes on at batch 1" in logs
    assert "plan from iteration" in logs
    assert any(world == 1 for _, world, *_ in starts(workdir))


def test_a_worker_hung_in_a_collective_times_out_and_restarts(workdir: Path,
                                                              tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    job = write_spec(workdir / "tiny.yaml", LONGER)
    client = client_for(workdir)
    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as cluster:
        proc = submit(workdir, cluster, job, "run.max_failures=1", "eval.enabled=false",
                      "run.collective_timeout_s=30")
        stopped: int | None = None
        try:
            wait_until(lambda: last_step(client) >= 5, timeout=600,
                       what="no progress before the hang")
            stopped = next(pid for rank, world, pid, *_ in starts(workdir) if rank == 1)
            os.kill(stopped, signal.SIGSTOP)
            hung_at = time.time()
            output = finish(proc)
        finally:
            if stopped is not None:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(stopped, sig)
                    except ProcessLookupError:
                        pass
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, output
    run = the_run(client)
    assert run is not None and run.info.status == "FINISHED"
    steps = history(client, "total_loss")
    assert [s for s, _, _ in steps] == sorted({s for s, _, _ in steps}) and steps[-1][0] == 15
    resumed = [t / 1000 for _, _, t in steps if t / 1000 > hung_at]
    assert resumed and resumed[0] - hung_at >= 30  # not before the collective timed out
    logs = worker_logs(workdir)
    # Both ranks of the new group read the shared checkpoint.
    assert logs.count("restored from Ray checkpoint at iteration") >= 2, logs[-3000:]
    assert_hang_report(client, run.info.run_id, logs, output)


def assert_hang_report(client: MlflowClient, run_id: str, logs: str, output: str) -> None:
    """Before the restart, the hang was diagnosed: one artifact for the attempt naming the
    stopped rank, with a Python stack of each rank (the stopped one read by py-spy)."""
    assert [a.path for a in client.list_artifacts(run_id, "hangs")] == ["hangs/attempt-1.txt"]
    text = Path(client.download_artifacts(run_id, "hangs/attempt-1.txt")).read_text()
    assert text.splitlines()[1] == "did not arrive: rank 1", text[:2000]
    sections = text.split("=== rank ")[1:]
    assert [s.split(" ", 1)[0] for s in sections] == ["0", "1"], text[:2000]
    assert all("train_loop_per_worker" in s for s in sections), text
    assert "py-spy dump --nonblocking" in sections[1], text
    for where in (logs, output):
        assert "rank 1 did not arrive; stacks of 2 ranks in hangs/attempt-1.txt" in where


def test_head_loss_fails_the_run_and_resume_continues_on_a_new_cluster(
        workdir: Path, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    job = write_spec(workdir / "tiny.yaml", LONGER)
    client = client_for(workdir)
    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as cluster:
        proc = submit(workdir, cluster, job, "eval.enabled=false", remote=False)
        try:
            wait_until(lambda: last_step(client) >= 5, timeout=600,
                       what="no progress before the kill")
            cluster.kill_node("head")
        finally:
            output = finish(proc, timeout=300)
    assert proc.returncode == 1, output
    run = the_run(client)
    assert run is not None and run.info.status == "FAILED", output
    before = last_step(client)

    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as fresh:
        again = submit(workdir, fresh, job, "eval.enabled=false", "--resume", run.info.run_id,
                       remote=False)
        output = finish(again)
    assert again.returncode == 0, output
    run = the_run(client)
    assert run is not None and run.info.status == "FINISHED"
    steps = [s for s, _, _ in history(client, "total_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 15 and before < 15
    assert "restored from Ray checkpoint at iteration" in worker_logs(workdir)


def test_a_head_lost_under_submit_address_leaves_a_stale_run_that_resumes(
        workdir: Path, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    """The driver runs on the head and dies with it, unwinding nothing: its run stays RUNNING
    in MLflow but stale (its pid is gone), and --resume continues it on a new cluster."""
    job = write_spec(workdir / "tiny.yaml", LONGER)
    client = client_for(workdir)
    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as cluster:
        proc = submit(workdir, cluster, job, "eval.enabled=false")
        try:
            wait_until(lambda: last_step(client) >= 5, timeout=600,
                       what="no progress before the kill")
            cluster.kill_node("head")
        finally:
            finish(proc, timeout=300)
    run = the_run(client)
    assert run is not None and run.info.status == "RUNNING"
    before = last_step(client)
    listed = subprocess.run([sys.executable, "-m", "orchestrator", "runs", "list", "--stale",
                             "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"], cwd=workdir,
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert run.info.run_id in listed.stdout, listed.stdout + listed.stderr

    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as fresh:
        again = submit(workdir, fresh, job, "eval.enabled=false", "--resume", run.info.run_id)
        output = finish(again)
    assert again.returncode == 0, output
    assert "was left RUNNING" in output, output
    run = the_run(client)
    assert run is not None and run.info.status == "FINISHED"
    steps = [s for s, _, _ in history(client, "total_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 15 and before < 15
    assert "restored from Ray checkpoint at iteration" in worker_logs(workdir)


def test_a_node_added_mid_run_grows_an_elastic_group(workdir: Path,
                                                     tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    """Ray 2.60 Train resizes a running elastic group when room appears (checked every
    run.elastic_resize_check_s): it restarts the group bigger from the last checkpoint."""
    job = write_spec(workdir / "tiny.yaml", LONGEST)
    client = client_for(workdir)
    with start_cluster(1, tmp_path_factory.mktemp("cluster")) as cluster:
        proc = submit(workdir, cluster, job, "resources.workers=[1,2]", "eval.enabled=false",
                      "run.elastic_resize_check_s=5")
        try:  # the node joins once a checkpoint is in storage: the bigger group resumes it
            wait_until(lambda: list((workdir / "shared").glob("*/iter_*/model.pth")),
                       timeout=600, what="no checkpoint before the new node")
            cluster.add_node()
        finally:
            output = finish(proc)
    assert proc.returncode == 0, output
    run = the_run(client)
    assert run is not None and run.info.status == "FINISHED"
    assert [v for _, v, _ in history(client, "plan/workers")] == [1.0, 2.0]
    steps = [s for s, _, _ in history(client, "total_loss")]
    # The plan: 32 iterations at batch 2 (the reference); the run ends there whatever batch
    # it began at, and every step is logged once, before the grow and after it.
    assert steps == list(range(32)), steps
    assert list((workdir / "shared").glob("*/iter_0000031/model.pth"))
    iterations = {s: v for s, v, _ in history(client, "iteration")}
    assert iterations[31] == 31.0 and iterations[0] == 1.0  # batch 2 at the end, 1 at first
    assert any(world == 2 for _, world, *_ in starts(workdir))
    assert "checkpoint was written at batch 1, training goes on at batch 2" in worker_logs(workdir)
