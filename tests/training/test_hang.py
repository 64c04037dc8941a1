"""Hang diagnostics on real processes: py-spy on a SIGSTOPped child, and a rank whose step
blocks reporting a stopped peer through a real Ray actor into a real sqlite MLflow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from detectron2.engine import TrainerBase
from mlflow.tracking import MlflowClient

from orchestrator.training.hang import Member, py_spy_dump
from orchestrator.training.hang_watch import HangWatch, WatchContext

CHILD = """
import sys, time
def stuck_in_the_peer():
    print("ready", flush=True)
    time.sleep(600)
stuck_in_the_peer()
"""


@pytest.fixture
def stopped_child() -> Iterator[int]:
    """A Python process inside ``stuck_in_the_peer``, SIGSTOPped (as the slow test's rank 1)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(0.2)  # past the print, into the sleep
        os.kill(child.pid, signal.SIGSTOP)
        yield child.pid
    finally:
        child.kill()  # SIGKILL ends a stopped process too
        child.wait(timeout=30)
        assert child.stdout is not None
        child.stdout.close()


def test_py_spy_reads_the_stack_of_a_stopped_process(stopped_child: int) -> None:
    text = py_spy_dump(stopped_child)
    assert "--nonblocking" in text and "stuck_in_the_peer" in text, text


@pytest.fixture
def ray_local() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


class _BlockingTrainer(TrainerBase):  # type: ignore[misc]
    """detectron2's own loop; iteration 3 waits until released (a collective that never
    completes, from this rank's side)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def run_step(self) -> None:
        if self.iter == 3:
            waiting_for_the_peer(self.release)


def waiting_for_the_peer(release: threading.Event) -> None:
    assert release.wait(timeout=120)


def _release_once_reported(watch: HangWatch, trainer: _BlockingTrainer) -> None:
    deadline = time.monotonic() + 60
    while not watch.reported and time.monotonic() < deadline:
        time.sleep(0.1)
    trainer.release.set()


def _run(workdir: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    experiment = client.create_experiment("hang", artifact_location=str(workdir / "mlruns"))
    return client, client.create_run(experiment).info.run_id


def test_a_stalled_rank_reports_the_rank_that_did_not_arrive(
        workdir: Path, ray_local: None, stopped_child: int) -> None:
    import ray

    from orchestrator.training.hang import HangBoard

    client, run_id = _run(workdir)
    node = ray.get_runtime_context().get_node_id()
    members = [Member(0, node, os.getpid(), "here"), Member(1, node, stopped_child, "here")]
    board = ray.remote(num_cpus=0)(HangBoard).remote()
    watch = HangWatch(WatchContext(board=board, members=members, node=node, timeout_s=4,
                                   tracking_uri=client.tracking_uri, run_id=run_id,
                                   output_dir=str(workdir / "output")), grace_s=0.5,
                      poll_s=0.2)
    trainer = _BlockingTrainer()
    trainer.register_hooks([watch])
    started = time.monotonic()
    threading.Thread(target=_release_once_reported, args=(watch, trainer), daemon=True).start()
    trainer.train(0, 6)  # iteration 3 blocks until the report is written (or 60 s)
    assert watch.reported, "no report"
    line = watch.reported[0]
    assert "iteration 3" in line and "rank 1 did not arrive" in line, line
    assert "stacks of 2 ranks in hangs/attempt-1.txt" in line, line
    local = client.download_artifacts(run_id, "hangs/attempt-1.txt", str(workdir))
    text = Path(local).read_text()
    assert text.splitlines()[1] == "did not arrive: rank 1", text
    assert "stuck_in_the_peer" in text and "waiting_for_the_peer" in text, text
    assert ray.get(board.get_reports.remote()) == [line]
    assert time.monotonic() - started < 30
