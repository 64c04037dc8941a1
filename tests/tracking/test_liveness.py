"""Run liveness from the driver's tags: a RUNNING run whose driver process was SIGKILLed is
stale at once on its host, one whose driver elsewhere stopped beating is stale after
STALE_AFTER_S; stale runs are listed and closed by ``orchestrator stop``, live ones refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.tracking.heartbeat import STALE_AFTER_S, TAG_BEAT, TAG_HOST
from orchestrator.tracking.liveness import liveness
from orchestrator.tracking.run import RunTracker
from tests.conftest import REPO

runner = CliRunner()

# A driver that opens a run and is then SIGKILLed (it kills itself: no unwinding at all).
KILLED_DRIVER = """
import os, signal, sys
from orchestrator.tracking.run import RunTracker
t = RunTracker.create(tracking_uri=sys.argv[1], experiment="e", run_name="doomed",
                      tags={"job": "tiny"})
print(t.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_driver_run(uri: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILLED_DRIVER, uri], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == -9, proc.stderr
    return proc.stdout.split()[0]


def test_a_sigkilled_driver_leaves_a_stale_run_that_is_listed_and_stopped(workdir: Path) -> None:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = killed_driver_run(uri)
    alive = RunTracker.create(tracking_uri=uri, experiment="e", run_name="alive",
                              tags={"job": "tiny"})  # this process: a live driver
    assert client.get_run(run_id).info.status == "RUNNING"
    live = liveness(client.get_run(run_id))
    assert live.state == "stale" and "is gone" in live.why, live
    assert liveness(client.get_run(alive.run_id)).state == "alive"

    listed = runner.invoke(app, ["runs", "list", "--stale", "--tracking-uri", uri])
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.output and alive.run_id not in listed.output
    everything = runner.invoke(app, ["runs", "list", "--tracking-uri", uri])
    assert run_id in everything.output and alive.run_id in everything.output
    assert "STALE" in everything.output

    stopped = runner.invoke(app, ["stop", run_id, "--tracking-uri", uri])
    assert stopped.exit_code == 0 and "marked KILLED" in stopped.output, stopped.output
    assert client.get_run(run_id).info.status == "KILLED"
    again = runner.invoke(app, ["runs", "list", "--stale", "--tracking-uri", uri])
    assert "no stale runs" in again.output
    alive.finish("FINISHED")


def test_a_driver_elsewhere_is_stale_only_once_its_heartbeat_stops(workdir: Path) -> None:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    tracker = RunTracker.create(tracking_uri=uri, experiment="e", run_name="remote",
                                tags={"job": "tiny"})
    tracker.finish("FINISHED")  # no beating from this process for it
    client.update_run(tracker.run_id, status="RUNNING")  # as a driver on another machine
    client.set_tag(tracker.run_id, TAG_HOST, "some-other-machine")
    client.set_tag(tracker.run_id, TAG_BEAT, f"{time.time() - 5:.0f}")
    live = liveness(client.get_run(tracker.run_id))
    assert live.state == "alive" and "some-other-machine" in live.why
    client.set_tag(tracker.run_id, TAG_BEAT, f"{time.time() - STALE_AFTER_S - 60:.0f}")
    live = liveness(client.get_run(tracker.run_id))
    assert live.state == "stale" and "no heartbeat" in live.why, live


def test_stop_of_an_unknown_run_is_bad_input(workdir: Path) -> None:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    RunTracker.create(tracking_uri=uri, experiment="e", run_name="x", tags={}).finish("FINISHED")
    result = runner.invoke(app, ["stop", "0" * 32, "--tracking-uri", uri])
    assert result.exit_code == 2 and "no such MLflow run" in result.output


# A driver that keeps its run open until SIGTERM, which it handles as `orchestrator` does.
WAITING_DRIVER = """
import signal, sys, time
from orchestrator.launch.signals import raise_interrupt
from orchestrator.tracking.run import RunTracker
signal.signal(signal.SIGTERM, raise_interrupt)
t = RunTracker.create(tracking_uri=sys.argv[1], experiment="e", run_name="r", tags={})
print(t.run_id, flush=True)
try:
    time.sleep(600)
except KeyboardInterrupt:
    t.finish("KILLED")
"""


def test_a_stop_asked_through_the_tag_is_read_by_the_drivers_heartbeat(workdir: Path) -> None:
    """How ``orchestrator stop`` reaches a driver on another machine: the stop tag, read with
    the next heartbeat (at most HEARTBEAT_S later)."""
    from orchestrator.tracking.heartbeat import HEARTBEAT_S, TAG_STOP

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WAITING_DRIVER, uri], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        MlflowClient(tracking_uri=uri).set_tag(run_id, TAG_STOP, f"{time.time():.0f}")
        proc.wait(timeout=HEARTBEAT_S + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "KILLED"
