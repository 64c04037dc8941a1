"""``orchestrator runs import``: a reference training log becomes an MLflow run beside ours.

The run gets the same metric names, units (AP in percent) and steps that our own runs get, so the
MLflow UI and ``runs compare`` line them up without conversion. Steps are iterations at a
reference batch (``tracking.steps``), which needs the batch the log was trained at: ``batch``,
else ``SOLVER.IMS_PER_BATCH`` of the ``config.yaml`` that detectron2 writes beside its
``metrics.json``, else the reference batch itself (the steps are then the log's iterations).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError
from orchestrator.tracking.logfiles import DETECTRON2, ParsedLog, parse_log
from orchestrator.tracking.run import RunTracker
from orchestrator.tracking.steps import StepAxis

__all__ = ["import_log", "guess_model", "default_run_name", "log_batch", "DEFAULT_REFERENCE_BATCH"]

DEFAULT_REFERENCE_BATCH = 16  # detectron2's and MMDetection's 1x recipes: 8 GPUs x 2 images

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


def log_batch(path: Path, parsed: ParsedLog, batch: int | None,
              reference_batch: int) -> tuple[int, str]:
    """(the total batch the log was trained at, where that came from)."""
    if batch is not None:
        if batch < 1:
            raise InputError(f"--batch must be positive, got {batch}")
        return batch, "user"
    config = path.parent / "config.yaml"
    if parsed.source_format == DETECTRON2 and config.is_file():
        import yaml

        try:
            found = yaml.safe_load(config.read_text(encoding="utf-8"))["SOLVER"]["IMS_PER_BATCH"]
        except (yaml.YAMLError, OSError, KeyError, TypeError):
            found = None
        if isinstance(found, int) and found > 0:
            return found, str(config)
    return reference_batch, "assumed: the reference batch"


def import_log(path: Path, *, tracking_uri: str, experiment: str, run_name: str | None = None,
               iters_per_epoch: int | None = None, batch: int | None = None,
               reference_batch: int = DEFAULT_REFERENCE_BATCH) -> str:
    """Create a FINISHED run holding the log's metrics at steps of ``reference_batch``;
    returns its run id."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected a detectron2 metrics.json or an "
                         "MMDetection log.json)")
    if reference_batch < 1:
        raise InputError(f"--reference-batch must be positive, got {reference_batch}")
    parsed = parse_log(path, iters_per_epoch=iters_per_epoch)
    total, source = log_batch(path, parsed, batch, reference_batch)
    parsed.params.update({"total_batch": str(total), "total_batch_source": source,
                          "reference_batch": str(reference_batch)})
    axis = StepAxis(batch=total, reference_batch=reference_batch)
    tags = {"imported": "true", "model": guess_model(path), "source_format": parsed.source_format,
            **parsed.tags}
    tracker = RunTracker.create(tracking_uri=tracking_uri, experiment=experiment,
                                run_name=run_name or default_run_name(path), tags=tags)
    try:
        tracker.log_params({"source_format": parsed.source_format,
                            "source_file": str(path.resolve()),
                            "source_records": str(parsed.records), **parsed.params})
        _log_metrics(tracker, parsed, axis)
        tracker.log_file(path, "source")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return tracker.run_id


def on_axis(parsed: ParsedLog, axis: StepAxis) -> dict[str, list[tuple[int, float]]]:
    """Each metric at steps of ``axis``, plus ``iteration``; where iterations share a step
    (a batch below the reference batch) the last value wins, as in the live writer."""
    shift = 1 if parsed.counts_done else 0
    iterations = sorted({step - shift for series in parsed.metrics.values() for step, _ in series})
    series_of = {**parsed.metrics,
                 "iteration": [(i + shift, float(i)) for i in iterations if i >= 0]}
    result = {}
    for name, series in series_of.items():
        ordered = sorted(series, key=_first)  # stable: a log's repeated step keeps its order
        by_step = {axis.step(max(0, step - shift)): value for step, value in ordered}
        result[name] = sorted(by_step.items())
    return result


def _first(point: tuple[int, float]) -> int:
    return point[0]


def _log_metrics(tracker: RunTracker, parsed: ParsedLog, axis: StepAxis) -> None:
    """All points in batches of at most 1000, as the writer does for live runs."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points: list[Any] = [Metric(key=name, value=value, timestamp=now, step=step)
                         for name, series in on_axis(parsed, axis).items()
                         for step, value in series]
    client = tracker.client
    for start in range(0, len(points), _BATCH):
        client.log_batch(tracker.run_id, metrics=points[start:start + _BATCH])
