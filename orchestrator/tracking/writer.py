"""Rank 0's detectron2 ``EventWriter`` that sends every scalar to the driver's MLflow run.

It writes what detectron2's ``JSONWriter`` writes to ``metrics.json`` (same names, same
smoothing, the iteration as step), batched, so MLflow and ``metrics.json`` agree.
"""

from __future__ import annotations

import time
from typing import Any

from detectron2.utils.events import EventWriter, get_event_storage

__all__ = ["MLflowWriter", "SystemMetricsWriter"]

_BATCH = 1000  # MLflow's log_batch limit for metrics


class MLflowWriter(EventWriter):
    """Log new scalars (those with an iteration past the last one logged) to one run."""

    def __init__(self, *, tracking_uri: str, run_id: str, window_size: int = 20) -> None:
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._run_id = run_id
        self._window = window_size
        self._last_step = self._logged_steps()

    def _logged_steps(self) -> dict[str, int]:
        """Last step of every metric the run already has: after a restart from a checkpoint,
        replayed iterations are not logged twice (MLflow would keep both rows)."""
        keys = self._client.get_run(self._run_id).data.metrics
        return {key: max(m.step for m in self._client.get_metric_history(self._run_id, key))
                for key in keys}

    def _pending(self) -> list[Any]:
        from mlflow.entities import Metric

        storage = get_event_storage()
        now = int(time.time() * 1000)
        pending = []
        for name, (value, step) in storage.latest_with_smoothing_hint(self._window).items():
            if step <= self._last_step.get(name, -1):
                continue
            pending.append(Metric(key=name, value=float(value), timestamp=now, step=int(step)))
        return pending

    def write(self) -> None:
        pending = self._pending()
        for start in range(0, len(pending), _BATCH):
            self._client.log_batch(self._run_id, metrics=pending[start:start + _BATCH])
        for metric in pending:
            self._last_step[metric.key] = metric.step


class SystemMetricsWriter(EventWriter):
    """Rank 0's machine load, logged beside the losses so runs can be compared on cost too:
    ``system/cpu_percent``, ``system/memory_gb`` (this process tree's RSS), and with CUDA
    ``system/gpu_memory_gb`` / ``system/gpu_max_memory_gb`` (PyTorch's allocator)."""

    def __init__(self, *, tracking_uri: str, run_id: str) -> None:
        import psutil
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._run_id = run_id
        self._process = psutil.Process()
        self._process.cpu_percent()  # the first call only starts the measurement

    def sample(self) -> dict[str, float]:
        import torch

        rss = self._process.memory_info().rss
        for child in self._process.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except Exception:  # noqa: BLE001 - a child may exit while we look
                continue
        values = {"system/cpu_percent": self._process.cpu_percent(),
                  "system/memory_gb": rss / 2**30}
        if torch.cuda.is_available():
            values["system/gpu_memory_gb"] = torch.cuda.memory_allocated() / 2**30
            values["system/gpu_max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return values

    def write(self) -> None:
        from mlflow.entities import Metric

        step = get_event_storage().iter
        now = int(time.time() * 1000)
        metrics = [Metric(key=k, value=float(v), timestamp=now, step=step)
                   for k, v in self.sample().items()]
        self._client.log_batch(self._run_id, metrics=metrics)
