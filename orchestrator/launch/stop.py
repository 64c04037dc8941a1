"""``orchestrator stop RUN_ID``: stop a run by its MLflow run id, wherever its driver runs.

A driver on this host gets SIGTERM (it unwinds as on Ctrl-C and marks the run KILLED); one on
another machine is asked through the run's ``orchestrator.stop_requested`` tag, which its
heartbeat reads within ``HEARTBEAT_S``. A run whose driver is already gone is marked KILLED
here, since nobody else will.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from orchestrator.errors import InputError, OrchestratorError
from orchestrator.secrets import redact_urls
from orchestrator.tracking.heartbeat import TAG_STOP
from orchestrator.tracking.liveness import liveness

__all__ = ["stop_run"]


def _get_run(client: Any, run_id: str, tracking_uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise InputError(f"{run_id}: no such MLflow run in {redact_urls(tracking_uri)} (a Ray "
                         "job id needs --address)") from None


def stop_run(run_id: str, *, tracking_uri: str, wait_s: float = 90) -> str:
    """Stop the run's driver, or close a run that has none; returns what happened. Raises
    OrchestratorError (exit 1) if a live driver has not ended the run within ``wait_s``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = _get_run(client, run_id, tracking_uri)
    live = liveness(run)
    if live.state == "ended":
        return f"run {run_id}: already ended ({run.info.status})"
    if live.state == "stale":
        client.set_terminated(run_id, "KILLED")
        return f"run {run_id}: {live.why}; marked KILLED"
    client.set_tag(run_id, TAG_STOP, f"{time.time():.0f}")
    if live.pid is not None:
        os.kill(live.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        status = client.get_run(run_id).info.status
        if status != "RUNNING":
            return f"run {run_id}: stopped, its driver marked it {status}"
        time.sleep(1)
    raise OrchestratorError(f"run {run_id}: stop requested, but its driver has not ended the "
                            f"run within {wait_s:g} s ({live.why})")
