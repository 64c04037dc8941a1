"""Just-in-time checkpoints on a real multi-node Ray on this machine: a node preempted with a
notice (``orchestrator cluster preempt``), and a SIGTERM to one worker. Each trains a tiny model
for a few dozen iterations on 1-CPU nodes, so they are ``slow``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.launch.local_cluster import NODE_ENV
from orchestrator.launch.waiting import wait_until
from orchestrator.training.elastic import equivalent_iteration
from tests.conftest import write_spec
from tests.launch.test_multinode import start_cluster, starts
from tests.launch.test_multinode_faults import (
    LONGER,
    client_for,
    finish,
    history,
    last_step,
    submit,
    the_run,
    worker_logs,
)

pytestmark = pytest.mark.slow

DEADLINE_S = 20
# Long enough for the notice (Ray Train's watcher polls the GCS every 5 s) to arrive mid-run.
LONG = LONGER.replace("max_iter: 16", "max_iter: 64")


def preempt(state_path: Path, node: str, deadline_s: int) -> subprocess.CompletedProcess[str]:
    """``orchestrator cluster preempt`` as a user runs it (it returns after the kill)."""
    return subprocess.run([sys.executable, "-m", "orchestrator", "cluster", "preempt", node,
                           f"--deadline={deadline_s}", f"--state={state_path}"],
                          env={**os.environ, **NODE_ENV}, capture_output=True, text=True,
                          timeout=deadline_s + 120, check=False)


def restored_at(logs: str) -> list[int]:
    return [int(m) for m in re.findall(r"restored from Ray checkpoint at iteration (\d+)", logs)]


def test_a_preempted_node_saves_before_the_deadline_and_redoes_nothing(
        workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    job = write_spec(workdir / "tiny.yaml", LONG)
    client = client_for(workdir)
    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as cluster:
        # max_failures 0: the run survives only if the preemption is not counted as a failure
        proc = submit(workdir, cluster, job, "resources.workers=[1,2]", "run.max_failures=0",
                      "eval.enabled=false", "run.preemption_check_every=1")
        try:
            wait_until(lambda: last_step(client) >= 3, timeout=600,
                       what="no progress before the preemption")
            drained = preempt(cluster.state_path, "worker-1", DEADLINE_S)
            assert drained.returncode == 0, drained.stdout + drained.stderr
            assert "preempted worker-1" in drained.stdout
        finally:
            output = finish(proc)
    assert proc.returncode == 0, output
    run = the_run(client)
    assert run is not None and run.info.status == "FINISHED"
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("preemption/")}
    assert len(tags) == 1, (tags, output[-5000:])
    saved = [int(v) for _, v, _ in history(client, "preemption/iteration")]
    assert len(saved) == 1 and f"checkpoint saved at iteration {saved[0]}" in next(
        iter(tags.values()))
    k = saved[0]
    steps = [s for s, _, _ in history(client, "total_loss")]
    # Steps count iterations at the reference batch (2): every one of the 64 once, across the
    # shrink from batch 2 to batch 1.
    assert steps == list(range(64)), (k, steps)
    # Batch 2 up to the checkpoint, then batch 1 from the very next image: no image twice.
    images = {s: v for s, v, _ in history(client, "images_seen")}
    assert images[k] == 2 * (k + 1) and images[k + 1] == 2 * (k + 2), (k, images)
    first = min(v for s, v, _ in history(client, "iteration") if s > k)
    assert first in (equivalent_iteration(k, 2, 1) + 1, equivalent_iteration(k, 2, 1) + 2)
    assert restored_at(worker_logs(workdir)) == [k]
    assert [v for _, v, _ in history(client, "plan/workers")] == [2.0, 1.0]


def test_sigterm_to_a_worker_saves_a_checkpoint_and_the_run_resumes_from_it(
        workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    job = write_spec(workdir / "tiny.yaml", LONGER)
    client = client_for(workdir)
    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as cluster:
        proc = submit(workdir, cluster, job, "run.max_failures=1", "eval.enabled=false",
                      "run.preemption_check_every=1")
        try:
            wait_until(lambda: last_step(client) >= 5, timeout=600,
                       what="no progress before the SIGTERM")
            pid = next(pid for rank, _, pid, *_ in starts(workdir) if rank == 1)
            os.kill(pid, signal.SIGTERM)
            termed_at = last_step(client)
        finally:
            output = finish(proc)
    assert proc.returncode == 0, output
    run = the_run(client)
    assert run is not None and run.info.status == "FINISHED"
    steps = [s for s, _, _ in history(client, "total_loss")]
    assert steps == list(range(16)), steps
    logs = worker_logs(workdir)
    saved = [int(m) for m in re.findall(r"SIGTERM: checkpoint at iteration (\d+) saved", logs)]
    # every rank says it; the checkpoint is the one of the step in progress at the signal
    assert saved and len(set(saved)) == 1 and saved[0] >= termed_at, (saved, termed_at)
    assert set(restored_at(logs)) == {saved[0]}  # each rank of the restarted group says it
