"""The table ``orchestrator runs list`` prints: one row per run, its driver's state beside it."""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table

from orchestrator.tracking.liveness import Liveness

__all__ = ["runs_table"]


def _started(run: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.info.start_time / 1000))


def runs_table(runs: list[tuple[Any, Liveness]], *, title: str) -> Table:
    """Run id in full (it is what --resume and stop take), name, job, status, start, driver."""
    table = Table(title=title)
    table.add_column("run id", no_wrap=True)  # copied into --resume and stop: never broken
    for name in ("name", "job", "status", "started", "driver"):
        table.add_column(name)
    for run, live in runs:
        status = run.info.status
        if live.state == "stale":
            status = "STALE"  # RUNNING in MLflow, with no driver
        table.add_row(run.info.run_id, run.info.run_name or "", run.data.tags.get("job", ""),
                      status, _started(run), "" if live.state == "ended" else live.why)
    return table
