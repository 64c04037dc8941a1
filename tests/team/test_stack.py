"""``orchestrator team up/status/down``: the team stack started for real on 127.0.0.1, used as a
job uses it, and stopped by pid with nothing left running."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psutil
import pyarrow.fs
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import InputError
from orchestrator.team.servers import postgres_bin
from orchestrator.team.stack import read_state, start_stack, stop_stack
from tests.conftest import REPO

runner = CliRunner()
pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL IS NOT INSTALLED: "
                                "install the Debian 'postgresql' package (.ci/run does)")


def _cli(workdir: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m orchestrator ARGS`` in ``workdir``, as a user's shell starts it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _exports(output: str) -> dict[str, str]:
    lines = [line.strip() for line in output.splitlines()]
    found = dict(line.removeprefix("export ").split("=", 1) for line in lines
                 if line.startswith("export "))
    (storage,) = [line for line in lines if line.startswith("run.storage_path=")]
    found["run.storage_path"] = storage.split("=", 1)[1].strip("'")
    return found


def _tree(pids: list[int]) -> set[int]:
    """The pids and every process under them (MLflow's uvicorn and job runners)."""
    found = set(pids)
    for pid in pids:
        try:
            found |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return found


def _running(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture
def detached(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``team up --detach`` run as a command; whatever a failed test leaves is stopped."""
    proc = _cli(tmp_path, "team", "up", "--detach", "--bucket", "rehearsal")
    output, _ = proc.communicate(timeout=300)
    state_path = tmp_path / ".orchestrator" / "team-stack.json"
    yield proc.returncode, output, state_path
    if state_path.exists():
        stop_stack(read_state(state_path))


def test_up_detach_serves_a_job_and_down_stops_every_process(
        detached: tuple[int, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    returncode, output, state_path = detached
    assert returncode == 0, output
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600
    state = json.loads(state_path.read_text())
    servers = {s["name"]: s for s in state["servers"]}
    assert set(servers) == {"s3", "postgres", "mlflow"} and state["bucket"] == "rehearsal"
    for server in servers.values():
        assert Path(server["log"]).is_file() and f":{server['port']}" in server["url"]
    env = _exports(output)
    assert env["MLFLOW_TRACKING_URI"] == servers["mlflow"]["url"]
    assert env["run.storage_path"].startswith("s3://rehearsal/checkpoints?endpoint_override=")

    status = runner.invoke(app, ["team", "status", "--state", str(state_path)],
                           env={"COLUMNS": "200"})
    assert status.exit_code == 0, status.output
    for server in servers.values():
        assert f"{server['pid']}" in status.output and server["url"] in status.output
    assert status.output.count("yes") == 3

    # A job's use: MLflow through the printed URI (artifacts land in the bucket, proxied),
    # checkpoints through the printed storage_path with the printed credentials.
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.create_run(client.create_experiment("rehearsal"))
    (tmp_path / "model_final.pth").write_bytes(b"weights")
    client.log_artifact(run.info.run_id, str(tmp_path / "model_final.pth"))
    s3 = boto3.client("s3", endpoint_url=servers["s3"]["url"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    storage, prefix = pyarrow.fs.FileSystem.from_uri(env["run.storage_path"])
    with storage.open_output_stream(f"{prefix}/job-1/last_checkpoint") as out:
        out.write(b"iter_0000002")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="rehearsal")["Contents"]]
    assert f"mlflow/1/{run.info.run_id}/artifacts/model_final.pth" in keys, keys
    assert "checkpoints/job-1/last_checkpoint" in keys, keys

    pids = _tree([s["pid"] for s in servers.values()])
    assert len(pids) > 3 and _running(pids)
    down = runner.invoke(app, ["team", "down", "--state", str(state_path)])
    assert down.exit_code == 0, down.output
    assert "team stack stopped (mlflow, postgres, s3)" in down.output
    deadline = time.monotonic() + 30
    while _running(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(pids)
    assert not state_path.exists() and not Path(servers["postgres"]["folder"]).exists()
    again = runner.invoke(app, ["team", "down", "--state", str(state_path)])
    assert again.exit_code == 2 and "no team stack is recorded there" in again.output


def _foreground(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """``team up`` without --detach, once its state file says it is up."""
    proc = _cli(tmp_path, "team", "up")
    state_path = tmp_path / ".orchestrator" / "team-stack.json"
    deadline = time.monotonic() + 300
    while not state_path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
    return proc, state_path


def test_up_in_the_foreground_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    proc, state_path = _foreground(tmp_path)
    try:
        assert proc.poll() is None, proc.communicate()[0]
        pids = _tree([s["pid"] for s in json.loads(state_path.read_text())["servers"]])
        again = runner.invoke(app, ["team", "up", "--state", str(state_path)])
        assert again.exit_code == 2 and "recorded there already" in again.output
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C at its terminal
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "Ctrl-C stops it." in output and "export MLFLOW_TRACKING_URI=" in output
    assert not _running(pids) and not state_path.exists()


def test_a_server_dying_on_its_own_stops_the_rest(tmp_path: Path) -> None:
    proc, state_path = _foreground(tmp_path)
    try:
        assert proc.poll() is None, proc.communicate()[0]
        servers = {s["name"]: s for s in json.loads(state_path.read_text())["servers"]}
        pids = _tree([s["pid"] for s in servers.values()])
        os.kill(servers["s3"]["pid"], signal.SIGKILL)  # the S3 server's machine lost
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    assert "team stack: s3 stopped on its own (see " in output and "s3-" in output
    assert not _running(pids) and not state_path.exists()


def test_a_server_that_cannot_start_leaves_nothing_running(tmp_path: Path) -> None:
    with socket.socket() as taken:  # MLflow's port is taken: it exits at start
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError) as caught:
            start_stack("stack-fails", tmp_path, mlflow_port=port)
    message = str(caught.value)
    assert "the MLflow server" in message and "mlflow-" in message, message
    assert "stopped what had started (s3 pid" in message and ", postgres pid" in message
    pids = {int(word.rstrip(",)")) for word in message.split("pid ")[1:]
            for word in [word.split()[0]]}
    assert len(pids) == 2 and not _running(pids)


def test_bad_bucket_names_are_refused_before_anything_starts(tmp_path: Path) -> None:
    result = runner.invoke(app, ["team", "up", "--bucket", "Bad_Bucket", "--state",
                                 str(tmp_path / "s.json")])
    assert result.exit_code == 2 and "--bucket 'Bad_Bucket': not an S3 bucket name" in \
        result.output
    assert not (tmp_path / "team-logs").exists()
