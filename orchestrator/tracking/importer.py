"""``orchestrator runs import``: a reference training log becomes an MLflow run beside ours.

The run gets the same metric names, units (AP in percent) and steps (global iterations) that our
own runs get, so the MLflow UI and ``runs compare`` line them up without conversion.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError
from orchestrator.tracking.logfiles import ParsedLog, parse_log
from orchestrator.tracking.run import RunTracker

__all__ = ["import_log", "guess_model", "default_run_name"]

_BATCH = 1000  # MLflow's log_batch limit for metrics
_MODELS = ("blendmask", "condinst", "mask_rcnn", "faster_rcnn", "retinanet")


def default_run_name(path: Path) -> str:
    """``x.metrics.json`` / ``x.log.json`` -> ``x``."""
    name = path.name
    for suffix in (".json", ".metrics", ".log"):
        name = name.removesuffix(suffix)
    return name or path.name


def guess_model(path: Path) -> str:
    """The architecture named in the file name (reference logs are named after the model)."""
    lowered = path.name.lower().replace("-", "_")
    return next((model for model in _MODELS if model in lowered), "unknown")


def import_log(path: Path, *, tracking_uri: str, experiment: str, run_name: str | None = None,
               iters_per_epoch: int | None = None) -> str:
    """Create a FINISHED run holding the log's metrics; returns its run id."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected a detectron2 metrics.json or an "
                         "MMDetection log.json)")
    parsed = parse_log(path, iters_per_epoch=iters_per_epoch)
    tags = {"imported": "true", "model": guess_model(path), "source_format": parsed.source_format,
            **parsed.tags}
    tracker = RunTracker.create(tracking_uri=tracking_uri, experiment=experiment,
                                run_name=run_name or default_run_name(path), tags=tags)
    try:
        tracker.log_params({"source_format": parsed.source_format,
                            "source_file": str(path.resolve()),
                            "source_records": str(parsed.records), **parsed.params})
        _log_metrics(tracker, parsed)
        tracker.log_file(path, "source")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return tracker.run_id


def _log_metrics(tracker: RunTracker, parsed: ParsedLog) -> None:
    """All points in batches of at most 1000, as the writer does for live runs."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points: list[Any] = [Metric(key=name, value=value, timestamp=now, step=step)
                         for name, series in parsed.metrics.items() for step, value in series]
    client = tracker.client
    for start in range(0, len(points), _BATCH):
        client.log_batch(tracker.run_id, metrics=points[start:start + _BATCH])
