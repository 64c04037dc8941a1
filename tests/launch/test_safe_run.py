"""One real embedded ``orchestrator submit`` watched from outside: secrets reach the workers
but nothing we store or print, run files are private, and the job's processes listen on
loopback only (Ray, MLflow over HTTP with credentials, 2 gloo workers)."""

from __future__ import annotations

import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.secrets import private_files
from orchestrator.tracking.ui import start_ui
from tests.conftest import TINY_JOB, write_spec
from tests.launch.processes import TreeWatch, start_submit

IN_SPEC = "hunter2-in-spec"  # a run.env value, given as an override
FROM_ENV = "hunter2-from-env"  # copied from the submitting environment (run.env_from)
PASSWORD = "hunter2-in-uri"  # inside the tracking URI: http://alice:PASSWORD@...
SECRETS = (IN_SPEC, FROM_ENV, PASSWORD)


@dataclass
class Watched:
    workdir: Path
    output: str
    returncode: int
    watch: TreeWatch
    client: MlflowClient
    run_id: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Watched:
    workdir = tmp_path_factory.mktemp("safe-run")
    (workdir / ".orchestrator").mkdir(mode=0o755)  # made before runs were kept private
    (workdir / ".orchestrator").chmod(0o755)
    write_spec(workdir / "tiny.yaml", TINY_JOB)
    with private_files():  # as `orchestrator ui` starts it
        server = start_ui(f"sqlite:///{workdir / 'mlflow.db'}", port=_free_port(),
                          log_path=workdir / "server.log")
    try:
        server.wait_ready(timeout=300)
        uri = server.url.replace("http://", f"http://alice:{PASSWORD}@")
        proc = start_submit(workdir, "tiny.yaml", f"tracking.tracking_uri={uri}",
                            f"run.env={{SECRET_IN_SPEC: {IN_SPEC}}}",
                            "run.env_from=[SECRET_FROM_ENV]",
                            env={"SECRET_FROM_ENV": FROM_ENV})
        watch = TreeWatch(proc.pid)
        try:
            output = watch.follow(proc, timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        server.stop()
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")  # the server's store
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return Watched(workdir, output, proc.returncode, watch, client, run.info.run_id)


def test_the_run_trains(watched: Watched) -> None:
    assert watched.returncode == 0, watched.output
    run = watched.client.get_run(watched.run_id)
    assert run.info.status == "FINISHED"
    assert "total_loss" in run.data.metrics  # the workers logged through the credentialed URI


def test_secrets_reach_workers_and_nothing_we_store_or_print(watched: Watched) -> None:
    # Ray hands a worker the job's env vars at exec (seen in /proc/PID/environ) or sets them
    # in the process later: the real values reached some worker process, and every rank's
    # log says both are set.
    environs = watched.watch.environs.values()
    assert any(e.get("SECRET_IN_SPEC") == IN_SPEC and e.get("SECRET_FROM_ENV") == FROM_ENV
               for e in environs)
    logs = sorted((watched.workdir / ".orchestrator" / "output").rglob("log.txt*"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text(encoding="utf-8")
        assert "run.env SECRET_IN_SPEC is set" in text and "SECRET_FROM_ENV is set" in text
    for secret in SECRETS:
        assert secret not in watched.output
    stored = [p for p in watched.workdir.rglob("*") if p.is_file() and p.name != "server.log"]
    assert any(p.name == "mlflow.db" for p in stored) and any(p.name == "job.yaml" for p in stored)
    for path in stored:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} in {path}"
    params = watched.client.get_run(watched.run_id).data.params
    assert params["spec.run.env.SECRET_IN_SPEC"] == "****"  # keys kept, values masked
    assert params["spec.run.env_from"] == "['SECRET_FROM_ENV']"
    assert params["spec.tracking.tracking_uri"].startswith("http://****@127.0.0.1:")


def test_run_files_are_private(watched: Watched) -> None:
    for name in ("mlflow.db", "mlruns", ".orchestrator"):
        mode = stat.S_IMODE((watched.workdir / name).stat().st_mode)
        assert not mode & 0o077, f"{name}: {oct(mode)}"
    logs = list((watched.workdir / ".orchestrator" / "output").rglob("log.txt*"))
    assert logs and all(not stat.S_IMODE(p.stat().st_mode) & 0o077 for p in logs)


def test_the_job_listens_on_loopback_only(watched: Watched) -> None:
    listeners = list(watched.watch.listeners.values())
    names = {listener.name for listener in listeners}
    for component in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        assert component in names, names
    # torch.distributed's TCPStore (rank 0's rendezvous, MASTER_PORT) binds every interface:
    # torch has no bind address for it (docs/security.md, "Loopback only").
    wildcard = [x for x in listeners if not x.loopback]
    # Ray retitles the worker process by what it runs: the actor's name, or the Train set-up
    # call that creates the store while it runs (``ray::execute._setup_torch_process_group``).
    worker_titles = ("ray::RayTrainWorker", "ray::execute._setup_torch_process_group")
    assert all(x.name.startswith(worker_titles) and x.ip in ("::", "0.0.0.0")
               for x in wildcard), wildcard
    assert len({x.pid for x in wildcard}) <= 1, wildcard
    assert len(listeners) - len(wildcard) >= 10


def test_the_embedded_job_starts_no_preemption_watcher(watched: Watched) -> None:
    """One machine has no node an autoscaler could drain: Ray Train's watcher process is left
    out of the embedded Ray (it is started again with every restarted worker group)."""
    titles = set().union(*watched.watch.names.values())
    assert any(t.startswith("ray::RayTrainWorker") for t in titles), titles
    assert any(t.startswith("ray::TrainController") for t in titles), titles
    assert not any("PreemptionWatcher" in t for t in titles), titles
