"""Workers the cluster has not placed: say what the job waits for, and give up in time.

Ray Train retries a worker group it cannot place for ever, without a word (its start-up timeout
is a retryable error). While a placement group shaped like this job's workers is pending and
no progress has come for a while, :class:`PendingWatch` prints what is awaited every
:data:`REPORT_S` and, after ``run.pending_timeout_s``, marks the runs this driver has open
FAILED and exits 1. (Ray Train's own interrupt cannot end ``fit()`` then: its abort waits for
the placement the controller is blocked on.) Leaving the process is what frees the job's
placement groups and actors, on a cluster too. Children of a cluster sweep, which queue for
each other on purpose and run on threads, are only reported.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from rich.console import Console

from orchestrator.job import WorkerJob

__all__ = ["PendingWatch", "REPORT_S"]

REPORT_S = 30.0
_POLL_S = 2.0


def _amounts(resources: dict[str, Any]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(resources.items()))


class PendingWatch:
    """Context manager around ``fit()``; ``timed_out`` holds the reason once it gave up."""

    def __init__(self, job: WorkerJob, console: Console, progress: Any, label: str = "",
                 report_s: float = REPORT_S) -> None:
        res = job.spec.resources
        self._bundle = {"CPU": res.cpus_per_worker}
        if res.gpus_per_worker > 0:
            self._bundle["GPU"] = res.gpus_per_worker
        self._sizes = range(res.min_workers, res.max_workers + 1)
        self._timeout = job.spec.run.pending_timeout_s
        self._console, self._progress, self._report = console, progress, report_s
        self._label = f"{label}: " if label else ""
        self._can_interrupt = threading.current_thread() is threading.main_thread()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pending-watch", daemon=True)
        self.timed_out: str | None = None

    def __enter__(self) -> PendingWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _pending_workers(self) -> int:
        """Workers in a pending placement group shaped like ours (0: none is pending)."""
        import ray.util

        for group in ray.util.placement_group_table().values():
            bundles = list(group["bundles"].values())
            if (group["state"] in ("PENDING", "RESCHEDULING") and len(bundles) in self._sizes
                    and all(b == self._bundle for b in bundles)):
                return len(bundles)
        return 0

    def _progressing(self) -> bool:
        seen = getattr(self._progress, "seen_at", None)
        return seen is not None and time.monotonic() - seen < self._report

    def _what(self, workers: int, waited: float) -> str:
        import ray

        free, total = ray.available_resources(), ray.cluster_resources()
        have = ", ".join(f"{free.get(k, 0):g}/{total.get(k, 0):g} {k}"
                         for k in sorted(self._bundle))
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return (f"{self._label}waiting for the cluster to place {workers} workers x "
                f"{_amounts(self._bundle)}: {have} free on {nodes} node(s); {waited:.0f} s so "
                f"far, giving up after run.pending_timeout_s={self._timeout:g} s")

    def _give_up(self, reason: str) -> None:
        from mlflow.tracking import MlflowClient

        from orchestrator.tracking.heartbeat import open_runs

        self.timed_out = reason
        for run_id, uri in open_runs().items():
            MlflowClient(tracking_uri=uri).set_terminated(run_id, "FAILED")
            print(f"error: {reason}: run {run_id} FAILED", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)

    def _run(self) -> None:
        since: float | None = None
        told = 0.0
        while not self._stop.wait(_POLL_S):
            if self._progressing():  # placed and training: the wait, if any, is over
                since = None
                continue
            try:
                workers = self._pending_workers()
            except Exception:  # noqa: BLE001 - Ray going away as fit() ends
                continue
            if not workers:  # placed, or between Ray Train's tries (run.worker_start_timeout_s)
                continue
            now = time.monotonic()
            since = since or now
            if now - since >= self._timeout and self._can_interrupt:
                self._give_up(f"the cluster did not place the workers within "
                              f"run.pending_timeout_s ({self._what(workers, now - since)})")
            if now - told >= self._report and now - since >= min(self._report,
                                                                  self._timeout / 3):
                self._console.print(self._what(workers, now - since), style="yellow",
                                    highlight=False)
                told = now
