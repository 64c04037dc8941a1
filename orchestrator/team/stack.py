"""``orchestrator team up``: the team's servers on this machine, to rehearse the team setup.

An S3 API server with one bucket, PostgreSQL, and an MLflow server on that database with its
artifacts proxied to ``s3://BUCKET/mlflow``, all on 127.0.0.1. A state file records each
server's pid, port, URL and log, so ``team down`` (from any process) stops exactly those
processes by pid, never by name. What a job needs to use the stack is printed by ``exports``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError, JobFailedError
from orchestrator.team.servers import (
    S3_ENV,
    Server,
    create_bucket,
    s3_storage_uri,
    start_mlflow,
    start_postgres,
    start_s3,
)

__all__ = ["TeamStack", "alive", "check_bucket", "exports", "read_state", "serve", "start_stack",
           "stop_stack", "write_state"]

# What each server's command line holds: a recorded pid whose process says otherwise was
# reused by a stranger since, and is never signalled.
_MARKERS = {"s3": b"orchestrator.team.s3", "postgres": b"postgres", "mlflow": b"mlflow"}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ORDER = ("s3", "postgres", "mlflow")  # started in this order, stopped in the reverse


@dataclass(frozen=True)
class TeamStack:
    """The started servers and the bucket that holds checkpoints and MLflow's artifacts."""

    bucket: str
    servers: dict[str, Server]

    @property
    def tracking_uri(self) -> str:
        return self.servers["mlflow"].url

    @property
    def storage_path(self) -> str:
        """``run.storage_path`` for checkpoints in the stack's bucket."""
        return s3_storage_uri(self.servers["s3"].url, self.bucket, "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket,
                "servers": [self.servers[name].to_dict() for name in ORDER
                            if name in self.servers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeamStack:
        servers = [Server.from_dict(s) for s in data["servers"]]
        return cls(bucket=str(data["bucket"]), servers={s.name: s for s in servers})


def check_bucket(bucket: str) -> None:
    """S3's naming rules, checked before any server starts."""
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InputError(f"--bucket {bucket!r}: not an S3 bucket name (3-63 lowercase letters, "
                         "digits, dots and hyphens; starting and ending with a letter or digit)")


def start_stack(bucket: str, log_dir: Path, *, mlflow_port: int | None = None) -> TeamStack:
    """S3 and PostgreSQL, the bucket, then MLflow on both. If any step fails, the servers
    already started are stopped (nothing is left running) and the failure is bad input (the
    machine cannot host the stack: a port taken, PostgreSQL missing), naming the step."""
    check_bucket(bucket)
    log_dir = log_dir.resolve()  # recorded in the state file, read from anywhere
    log_dir.mkdir(parents=True, exist_ok=True)
    started: dict[str, Server] = {}
    try:
        started["s3"] = start_s3(log_dir)
        started["postgres"] = start_postgres()
        create_bucket(started["s3"].url, bucket)
        started["mlflow"] = start_mlflow(
            backend_uri=started["postgres"].url, artifacts_destination=f"s3://{bucket}/mlflow",
            s3_endpoint=started["s3"].url, log_dir=log_dir, port=mlflow_port)
    except BaseException as exc:
        _stop_all(started)
        if isinstance(exc, Exception) and not isinstance(exc, InputError):
            names = ", ".join(f"{name} pid {server.pid}" for name, server in started.items())
            stopped = f"; stopped what had started ({names})" if started else ""
            raise InputError(f"team up: {exc}{stopped}") from None
        raise
    return TeamStack(bucket=bucket, servers=started)


def _stop_all(servers: dict[str, Server]) -> None:
    for name in reversed(ORDER):
        if name in servers:
            servers[name].stop()


def _is_ours(server: Server) -> bool:
    try:
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return _MARKERS.get(server.name, server.name.encode()) in cmdline and server.alive()


def alive(stack: TeamStack) -> dict[str, bool]:
    """Each server: is its recorded pid still that server?"""
    return {name: _is_ours(server) for name, server in stack.servers.items()}


def stop_stack(stack: TeamStack) -> list[str]:
    """Stop every server still running, by its recorded pid; returns the names stopped."""
    running = {name: server for name, server in stack.servers.items() if _is_ours(server)}
    _stop_all(running)
    for server in stack.servers.values():  # PostgreSQL's folder even when it died alone
        if server.folder and Path(server.folder).name.startswith("orchestrator-pg-"):
            shutil.rmtree(server.folder, ignore_errors=True)
    return [name for name in reversed(ORDER) if name in running]


def write_state(path: Path, stack: TeamStack) -> None:
    """Readable by the user only, and whole: written beside, then renamed over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(stack.to_dict(), out, indent=2)
    os.replace(tmp, path)


def read_state(path: Path) -> TeamStack:
    try:
        return TeamStack.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise InputError(f"{path}: no team stack is recorded there (start one with "
                         "`orchestrator team up`)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a team stack state file ({exc}); stop its servers by "
                         "pid and delete it") from None


def exports(stack: TeamStack) -> list[str]:
    """The shell lines a job needs: where to track, S3 credentials, where to checkpoint."""
    lines = [f"export MLFLOW_TRACKING_URI={stack.tracking_uri}"]
    lines += [f"export {key}={value}" for key, value in S3_ENV.items()]
    lines.append(f"run.storage_path='{stack.storage_path}'")
    return lines


def serve(bucket: str, *, state_path: Path, log_dir: Path, mlflow_port: int | None = None,
          on_ready: Callable[[TeamStack], None] | None = None) -> None:
    """Run the stack until Ctrl-C or SIGTERM, then stop it; the state file exists exactly
    while it is up. A server that dies on its own stops the rest (exit 1, naming its log)."""

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    stack: TeamStack | None = None
    try:
        stack = start_stack(bucket, log_dir, mlflow_port=mlflow_port)
        write_state(state_path, stack)
        if on_ready:
            on_ready(stack)
        while True:
            dead = [name for name, up in alive(stack).items() if not up]
            if dead:
                logs = ", ".join(stack.servers[name].log for name in dead)
                raise JobFailedError(f"team stack: {', '.join(dead)} stopped on its own (see "
                                     f"{logs}); stopped the rest")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan a server
        try:
            if stack is not None:
                stop_stack(stack)
                state_path.unlink(missing_ok=True)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
