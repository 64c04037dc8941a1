"""Is a RUNNING run's driver still there? Read from the tags ``tracking.heartbeat`` writes.

On the driver's own host the pid answers at once (the process, with the start time recorded,
exists or not); from elsewhere the heartbeat does: none for :data:`STALE_AFTER_S` means the
driver is gone. Runs opened before drivers recorded a heartbeat count from their start time.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.tracking.heartbeat import (
    STALE_AFTER_S,
    TAG_BEAT,
    TAG_HOST,
    TAG_PID,
    TAG_STARTED,
    process_started,
)

__all__ = ["Liveness", "liveness", "list_runs"]

State = Literal["alive", "stale", "ended"]


@dataclass(frozen=True)
class Liveness:
    """``state``: alive (a driver owns the run), stale (RUNNING, its driver gone) or ended.
    ``pid``: the driver's pid when it runs on this host."""

    state: State
    why: str
    beat_age_s: float | None = None
    pid: int | None = None


def _beat_age(run: Any, now: float) -> float:
    tags = run.data.tags
    last = float(tags[TAG_BEAT]) if TAG_BEAT in tags else run.info.start_time / 1000
    return max(0.0, now - last)


def _local_driver(tags: dict[str, str]) -> tuple[int, bool] | None:
    """(pid, alive) when the driver ran on this host, else None."""
    if tags.get(TAG_HOST) != socket.gethostname() or not tags.get(TAG_PID, "").isdigit():
        return None
    pid = int(tags[TAG_PID])
    started = process_started(pid)
    recorded = float(tags.get(TAG_STARTED) or 0)
    return pid, started is not None and abs(started - recorded) < 1.0


def liveness(run: Any, *, now: float | None = None) -> Liveness:
    """Whether an MLflow run (``mlflow.entities.Run``) still has a driver."""
    if run.info.status != "RUNNING":
        return Liveness("ended", f"it ended {run.info.status}")
    age = _beat_age(run, now if now is not None else time.time())
    local = _local_driver(run.data.tags)
    if local is not None:
        pid, alive = local
        if alive:
            return Liveness("alive", f"its driver (pid {pid} on this host) is running", age,
                            pid)
        return Liveness("stale", f"its driver (pid {pid} on this host) is gone", age)
    host = run.data.tags.get(TAG_HOST, "an unknown host")
    if age > STALE_AFTER_S:
        return Liveness("stale", f"no heartbeat from its driver on {host} for {age:.0f} s",
                        age)
    return Liveness("alive", f"its driver on {host} sent a heartbeat {age:.0f} s ago", age)


def list_runs(tracking_uri: str, *, stale_only: bool = False,
              limit: int = 20) -> list[tuple[Any, Liveness]]:
    """The newest runs of every experiment with their driver's liveness; ``stale_only``:
    every RUNNING run whose driver is gone, however old."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not ids:
        return []
    now = time.time()
    runs = client.search_runs(
        ids, filter_string="attributes.status = 'RUNNING'" if stale_only else "",
        max_results=10000 if stale_only else limit, order_by=["attributes.start_time DESC"])
    found = [(run, liveness(run, now=now)) for run in runs]
    return [(r, live) for r, live in found if live.state == "stale" or not stale_only]
