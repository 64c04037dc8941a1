"""Ctrl-C and SIGTERM on a real ``orchestrator submit``: exit 130, the run KILLED, one line
with the ``--resume`` command, no traceback or native stack dump."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY_JOB, write_spec
from tests.launch.processes import read_until, start_submit

# What a crash or an unhandled signal prints: Python tracebacks, faulthandler, absl/glog.
DUMPS = ("Traceback (most recent call last)", "Fatal Python error", "*** SIG", "Stack trace",
         "Check failed", "core dumped", "Aborted")


def _send(pid: int, how: str) -> None:
    if how == "SIGINT to the process":
        os.kill(pid, signal.SIGINT)
    elif how == "SIGINT to the process group":  # what Ctrl-C in a terminal does
        os.killpg(os.getpgid(pid), signal.SIGINT)
    else:
        os.kill(pid, signal.SIGTERM)


@pytest.mark.parametrize("how", ["SIGINT to the process", "SIGINT to the process group",
                                 "SIGTERM to the process"])
def test_signals_end_the_run_killed_with_exit_130(workdir: Path, how: str) -> None:
    job = write_spec(workdir / "tiny.yaml", TINY_JOB.replace("max_iter: 6", "max_iter: 500"))
    proc = start_submit(workdir, "tiny.yaml", "resources.workers=1")
    try:
        head = read_until(proc, lambda line: line.startswith("iter "), timeout=600)
        assert "iter " in head, head  # training is under way
        _send(proc.pid, how)
        rest, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = head + rest
    client = MlflowClient(tracking_uri=f"sqlite:///{job.parent / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED", output
    assert proc.returncode == 130, output
    resume = f"orchestrator submit tiny.yaml resources.workers=1 --resume {run.info.run_id}"
    lines = [line for line in rest.splitlines() if "marked KILLED" in line]
    assert len(lines) == 1 and resume in lines[0], rest
    for dump in DUMPS:
        assert dump not in output, output
