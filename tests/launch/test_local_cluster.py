"""The local cluster's process bookkeeping and arguments, on plain processes (no Ray)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import InputError
from orchestrator.launch.local_cluster import (
    ClusterProcess,
    node_processes,
    preempt_node,
    stop_from_state,
)


def test_a_node_is_its_processes_and_all_their_descendants() -> None:
    parent = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(node_processes([parent.pid])) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = node_processes([parent.pid])
        assert parent.pid in tree and len(tree) == 3, tree
    finally:
        for pid in node_processes([parent.pid]):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.wait()
    assert node_processes([parent.pid]) == []


def test_down_never_signals_a_process_that_is_not_the_recorded_supervisor(
        tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "60"])  # a pid reused by something else
    try:
        state = {"supervisor": stranger.pid, "temp_dir": str(tmp_path / "gone"), "nodes": []}
        assert stop_from_state(json.loads(json.dumps(state)), timeout=1) is False
        assert stranger.poll() is None
    finally:
        stranger.send_signal(signal.SIGKILL)
        stranger.wait()


@pytest.mark.parametrize(("args", "named"), [
    (["--cpus-per-node", "0"], "--cpus-per-node"), (["--cpus-per-node", "0.5"], "--cpus-per-node"),
    (["--cpus-per-node", "nan"], "--cpus-per-node"), (["--nodes", "0"], "--nodes")])
def test_cluster_up_refuses_arguments_no_worker_could_run_on(
        workdir: Path, args: list[str], named: str) -> None:
    result = CliRunner().invoke(app, ["cluster", "up", "--detach", *args])
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert list(workdir.iterdir()) == []  # no state file, no process, no .orchestrator/
    with pytest.raises(InputError, match="--cpus-per-node"):
        ClusterProcess.start(1, cpus_per_node=0, state_path=workdir / "state.json")


def test_killing_a_node_twice_is_refused_and_the_state_file_stays_true(workdir: Path) -> None:
    node = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])  # a node: a process and its child
    state = workdir / "state.json"
    state.write_text(json.dumps({"supervisor": 0, "temp_dir": "", "nodes": [
        {"name": "head", "pids": [os.getpid()]}, {"name": "worker-1", "pids": [node.pid]}]}))
    try:
        first = CliRunner().invoke(app, ["cluster", "kill-node", "worker-1", "--state", str(state)])
        assert first.exit_code == 0 and "killed worker-1" in first.output, first.output
        assert node.wait(timeout=10) == -signal.SIGKILL
        second = CliRunner().invoke(app, ["cluster", "kill-node", "worker-1", "--state",
                                          str(state)])
        assert second.exit_code == 2, second.output
        assert "killed already" in second.output and "nodes up: head" in second.output
        nodes = {n["name"]: n for n in json.loads(state.read_text())["nodes"]}
        assert nodes["worker-1"]["killed"] is True and not nodes["head"].get("killed")
    finally:
        node.kill()
        node.wait()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    import sys

    from tests.conftest import REPO

    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=300, check=False)


@pytest.mark.slow
def test_a_real_cluster_in_a_fresh_folder_and_a_worker_killed_twice(workdir: Path) -> None:
    up = _cli("cluster", "up", "--detach", "--nodes", "2", cwd=workdir)
    state = workdir / ".orchestrator" / "local-cluster.json"
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert state.is_file()
        first = _cli("cluster", "kill-node", "worker-1", cwd=workdir)
        assert first.returncode == 0 and "killed worker-1" in first.stdout, first.stderr
        second = _cli("cluster", "kill-node", "worker-1", cwd=workdir)
        assert second.returncode == 2 and "killed already" in second.stderr, second.stderr
        nodes = {n["name"]: n for n in json.loads(state.read_text())["nodes"]}
        assert nodes["worker-1"]["killed"] is True and not nodes["head"].get("killed")
        assert node_processes(nodes["worker-1"]["pids"]) == []
        assert node_processes(nodes["head"]["pids"])  # the rest of the cluster is up
    finally:
        down = _cli("cluster", "down", cwd=workdir)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not state.exists()


@pytest.mark.parametrize(("args", "named"), [
    (["worker-1", "--deadline", "0"], "--deadline"), (["worker-9"], "no such node"),
    (["head", "--deadline", "x"], "--deadline"), ([], "Missing argument")])
def test_preempt_refuses_bad_arguments_before_any_drain(
        workdir: Path, args: list[str], named: str) -> None:
    state = workdir / "state.json"
    state.write_text(json.dumps({"supervisor": 0, "temp_dir": "", "gcs_address": "x:1",
                                 "nodes": [{"name": "head", "pids": [os.getpid()]}]}))
    result = CliRunner().invoke(app, ["cluster", "preempt", *args, "--state", str(state)])
    assert result.exit_code == 2, result.output
    assert named in result.output


def test_preempt_drains_with_the_deadline_then_kills_the_node_when_it_passes(
        workdir: Path) -> None:
    node = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    state = workdir / "state.json"
    state.write_text(json.dumps({"supervisor": 0, "temp_dir": "", "gcs_address": "gcs:1",
                                 "nodes": [{"name": "head", "pids": [os.getpid()]},
                                           {"name": "worker-1", "pids": [node.pid],
                                            "node_id": "abc"}]}))
    drains: list[tuple[str, str, int, float]] = []
    try:
        start = time.monotonic()
        count = preempt_node(state, "worker-1", 1, drain=lambda gcs, node_id, deadline:
                             drains.append((gcs, node_id, deadline, time.monotonic())))
        assert count == 2 and time.monotonic() - start >= 1
        assert [d[:3] for d in drains] == [("gcs:1", "abc", 1)] and drains[0][3] - start < 1
        assert node.wait(timeout=10) == -signal.SIGKILL
        with pytest.raises(InputError, match="killed already"):
            preempt_node(state, "worker-1", 1, drain=lambda *a: drains.append(a))
        assert len(drains) == 1
    finally:
        node.kill()
        node.wait()
