"""A heartbeat for the MLflow runs a driver owns (MLflow has none of its own).

A driver that dies without unwinding (``kill -9``, a power loss, the head lost under
``submit --address``) cannot end its run, which stays RUNNING. So the driver records where it
runs when it opens a run (host, pid, process start time) and refreshes one tag,
``orchestrator.heartbeat`` (Unix seconds), every :data:`HEARTBEAT_S` while the run is open.
:mod:`orchestrator.tracking.liveness` reads them back: a RUNNING run whose driver is gone is
*stale*, and can be resumed or stopped.

Each beat also reads the run's ``orchestrator.stop_requested`` tag: ``orchestrator stop RUN_ID``
from another machine asks the driver to stop that way, and the driver then unwinds as on
SIGTERM (the run marked KILLED).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "TAG_BEAT", "TAG_HOST", "TAG_PID", "TAG_STARTED",
           "TAG_STOP", "driver_tags", "process_started", "beat", "forget", "open_runs"]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
# A run whose driver is elsewhere counts as stale after 8 missed beats: room for a slow
# tracking store and for some clock skew between the driver's machine and yours.
STALE_AFTER_S = 120.0

TAG_HOST = "orchestrator.driver_host"
TAG_PID = "orchestrator.driver_pid"
TAG_STARTED = "orchestrator.driver_started"  # the process's start time: pids are reused
TAG_BEAT = "orchestrator.heartbeat"
TAG_STOP = "orchestrator.stop_requested"


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (Unix seconds), or None if there is no such process."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def driver_tags() -> dict[str, str]:
    """Where this driver runs, and a first beat."""
    pid = os.getpid()
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(pid),
            TAG_STARTED: f"{process_started(pid) or 0:.2f}", TAG_BEAT: f"{time.time():.0f}"}


class _Beats:
    """One daemon thread per process beats for every run the process has open (a sweep has
    a parent and several children)."""

    def __init__(self) -> None:
        self._runs: dict[str, str] = {}  # run id -> tracking URI
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, tracking_uri: str, run_id: str) -> None:
        with self._lock:
            self._runs[run_id] = tracking_uri
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="heartbeat",
                                                daemon=True)
                self._thread.start()

    def remove(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def runs(self) -> dict[str, str]:
        with self._lock:
            return dict(self._runs)

    def _loop(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self._lock:
                runs = list(self._runs.items())
            for run_id, uri in runs:
                try:
                    self._beat(uri, run_id)
                except Exception as exc:  # noqa: BLE001 - a store outage must not stop training
                    logger.warning("heartbeat of run %s not recorded: %s", run_id, exc)

    def _beat(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        client: Any = MlflowClient(tracking_uri=tracking_uri)
        client.set_tag(run_id, TAG_BEAT, f"{time.time():.0f}")
        if TAG_STOP in client.get_run(run_id).data.tags:
            logger.warning("run %s: stop requested (orchestrator stop): stopping", run_id)
            self.remove(run_id)
            os.kill(os.getpid(), signal.SIGTERM)  # unwinds as a local `orchestrator stop` does


_BEATS = _Beats()


def beat(tracking_uri: str, run_id: str) -> None:
    """Keep ``run_id``'s heartbeat fresh until :func:`forget`."""
    _BEATS.add(tracking_uri, run_id)


def forget(run_id: str) -> None:
    _BEATS.remove(run_id)


def open_runs() -> dict[str, str]:
    """The runs this process has open: run id -> tracking URI."""
    return _BEATS.runs()
