"""A driver's run while it lives and after it dies: a live driver's run cannot be resumed and
is stopped by ``orchestrator stop RUN_ID`` (KILLED); a SIGKILLed driver's run is resumed into
the same MLflow run from its last checkpoint, with no step logged twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.launch.waiting import wait_until
from tests.conftest import REPO, TINY_JOB, write_spec
from tests.launch.processes import read_until, start_submit
from tests.launch.test_fault_tolerance import logged_steps

runner = CliRunner()
RUN_LINE = re.compile(r"MLflow run ([0-9a-f]{32}) in ")


def the_run(client: MlflowClient):  # type: ignore[no-untyped-def]
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run


def submit_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "orchestrator", "submit", *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=900)


def test_a_live_drivers_run_is_refused_then_stopped_by_run_id(workdir: Path) -> None:
    write_spec(workdir / "tiny.yaml", TINY_JOB.replace("max_iter: 6", "max_iter: 500"))
    proc = start_submit(workdir, "tiny.yaml", "resources.workers=1")
    try:
        head = read_until(proc, lambda line: line.startswith("iter "), timeout=600)
        found = RUN_LINE.search(head)
        assert found and "iter " in head, head
        run_id = found.group(1)
        refused = submit_cli(workdir, "tiny.yaml", "resources.workers=1", "--resume", run_id)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        said = " ".join(refused.stderr.split())
        assert "still RUNNING" in said and f"pid {proc.pid} on this host" in said, said
        assert f"orchestrator stop {run_id}" in said, said
        stopped = runner.invoke(app, ["stop", run_id])
        assert stopped.exit_code == 0 and "marked it KILLED" in stopped.output, stopped.output
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert the_run(MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")).info.status \
        == "KILLED"


@pytest.mark.slow
def test_a_sigkilled_driver_is_resumed_into_the_same_run(workdir: Path) -> None:
    spec = TINY_JOB.replace("max_iter: 6", "max_iter: 40").replace(
        "checkpoint_period: 100", "checkpoint_period: 4").replace("log_period: 2", "log_period: 1")
    write_spec(workdir / "tiny.yaml", spec)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    proc = start_submit(workdir, "tiny.yaml")
    try:
        checkpoint = lambda: list((workdir / ".orchestrator" / "ray").glob(  # noqa: E731
            "*/iter_0000003/model.pth"))
        wait_until(checkpoint, timeout=600, what="no checkpoint")
        wait_until(lambda: max(logged_steps(client), default=-1) >= 5, timeout=300,
                   what="no progress after the checkpoint")
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: no unwinding, no finally
        proc.wait(timeout=60)
    finally:
        try:  # whatever of its Ray outlived it (Ray's own processes die with their parent)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        assert proc.stdout is not None
        proc.stdout.close()
    run = the_run(client)
    assert run.info.status == "RUNNING"  # nobody closed it
    before = logged_steps(client)
    assert before and before[-1] < 39, before  # killed mid-training

    listed = runner.invoke(app, ["runs", "list", "--stale"])
    assert run.info.run_id in listed.output, listed.output
    again = submit_cli(workdir, "tiny.yaml", "--resume", run.info.run_id)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output
    assert "was left RUNNING" in output and "is gone" in output, output
    resumed = the_run(client)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    steps = logged_steps(client)
    assert steps == sorted(set(steps)) and steps[-1] == 39, steps  # none twice, all after it
    assert set(before) < set(steps)
    logs = "".join(p.read_text() for p in (workdir / ".orchestrator" / "output").glob("*/log.txt"))
    assert "restored from Ray checkpoint at iteration" in logs
