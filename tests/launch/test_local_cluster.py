"""The local cluster's process bookkeeping, on plain processes (no Ray)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from orchestrator.launch.local_cluster import node_processes, stop_from_state


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
