"""COCO AP of prediction records: pycocotools' numbers, several times faster.

Why it exists: pycocotools' ``COCOeval`` matches detections image by image in Python; at COCO-val
size (5,000 images, 100 detections each, bbox + segm) that is minutes of single-threaded rank-0
time while every other worker waits. faster-coco-eval's ``COCOeval_faster`` does the matching
and accumulation in C++ and yields the same precision and recall arrays, hence the same stats
(``tests/evaluation/test_scoring.py`` and ``bench/coco_scoring.py`` check them against
pycocotools). Results have the shape of detectron2's ``COCOEvaluator``: per task the six APs in
percent, NaN where one cannot be computed, and ``AP-<class>`` per category.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

__all__ = [
    "METRICS",
    "category_ap",
    "category_table",
    "evaluate_task",
    "load_ground_truth",
    "score_coco",
    "tasks_of",
]

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

Records = Sequence[dict[str, Any]]


def load_ground_truth(source: str | Path | dict[str, Any]) -> COCO:
    """The scorer's index of a COCO instances json file (or dict, indexed without a copy)."""
    return COCO(str(source) if isinstance(source, Path) else source)


def tasks_of(records: Records) -> list[str]:
    """detectron2's rule: always ``bbox``, and ``segm`` when any record has a mask."""
    return ["bbox", "segm"] if any("segmentation" in r for r in records) else ["bbox"]


def _detections(records: Records, task: str) -> list[dict[str, Any]]:
    # Copies: loading results adds fields (area, id, a mask's RLE) to every record.
    if task == "segm":
        # As detectron2 does: without the box, a mask's area (small/medium/large) is its own.
        return [{k: v for k, v in r.items() if k != "bbox"} for r in records]
    return [dict(r) for r in records]


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Scoring allocates millions of small acyclic objects (records, their copies, indexes);
    CPython's cycle collector would rescan all of them again and again (a fifth of the time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def evaluate_task(ground_truth: COCO, records: Records, task: str, *,
                  max_dets_per_image: int = 100,
                  img_ids: Sequence[int] | None = None) -> COCOeval_faster:
    """Evaluate, accumulate and summarize one task (``bbox`` or ``segm``) as detectron2 runs
    pycocotools: max detections ``[1, 10, max_dets_per_image]``, every ground-truth image
    unless ``img_ids`` is given. ``records`` must not be empty; they are left unchanged."""
    if task not in ("bbox", "segm"):
        raise ValueError(f"task must be 'bbox' or 'segm', got {task!r}")
    with _without_cyclic_gc():
        detections = ground_truth.loadRes(_detections(records, task))
        coco_eval = COCOeval_faster(ground_truth, detections, task, print_function=logger.debug)
        coco_eval.params.maxDets = [1, 10, max_dets_per_image]
        if img_ids is not None:
            coco_eval.params.imgIds = list(img_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def category_ap(coco_eval: COCOeval_faster, class_names: Sequence[str]) -> dict[str, float]:
    """``AP-<name>`` in percent per category (in the ground truth's sorted id order, as
    detectron2 orders ``thing_classes``); NaN for a category without ground truth."""
    precisions = coco_eval.eval["precision"]  # (iou, recall, class, area, max dets)
    if len(class_names) != precisions.shape[2]:
        raise ValueError(f"{len(class_names)} class names for {precisions.shape[2]} categories "
                         "in the ground truth")
    results = {}
    for idx, name in enumerate(class_names):
        precision = precisions[:, :, idx, 0, -1]  # all areas, the largest max detections
        precision = precision[precision > -1]
        results[f"AP-{name}"] = float(np.mean(precision) * 100) if precision.size else math.nan
    return results


def _task_results(ground_truth: COCO, records: Records, task: str,
                  class_names: Sequence[str] | None, max_dets_per_image: int,
                  img_ids: Sequence[int] | None) -> dict[str, float]:
    if not records:  # detectron2 reports NaN rather than running COCOeval on nothing
        return dict.fromkeys(METRICS, math.nan)
    coco_eval = evaluate_task(ground_truth, records, task, img_ids=img_ids,
                              max_dets_per_image=max_dets_per_image)
    results = {metric: float(stat * 100) if stat >= 0 else math.nan
               for metric, stat in zip(METRICS, coco_eval.stats, strict=False)}
    if class_names is not None and len(class_names) > 1:
        results.update(category_ap(coco_eval, class_names))
    return results


def score_coco(ground_truth: COCO, records: Records, *, tasks: Sequence[str] | None = None,
               class_names: Sequence[str] | None = None, max_dets_per_image: int = 100,
               img_ids: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """detectron2 ``COCOEvaluator``'s results for COCO result ``records``.

    Args:
        ground_truth: from ``load_ground_truth``; reusable across calls.
        records: ``instances_to_coco_json``-style records with the dataset's category ids.
        tasks: ``bbox`` and/or ``segm`` (default: ``tasks_of(records)``).
        class_names: names in category id order; with more than one, ``AP-<name>`` per class.
        max_dets_per_image: detections per image that count (COCO: 100).
        img_ids: score only these images (default: all images of the ground truth).

    Returns:
        ``{task: {"AP": .., "AP50": .., "AP75": .., "APs": .., "APm": .., "APl": ..,
        "AP-<name>": ..}}`` in percent, NaN where a value cannot be computed.
    """
    return {task: _task_results(ground_truth, records, task, class_names, max_dets_per_image,
                                img_ids)
            for task in sorted(tasks or tasks_of(records))}


def category_table(results: dict[str, float], columns: int = 3) -> str:
    """The per-category APs of one task as a pipe table, ``columns`` classes per row."""
    cells = [(k.removeprefix("AP-"), f"{v:.3f}") for k, v in results.items()
             if k.startswith("AP-")]
    rows = [cells[i:i + columns] for i in range(0, len(cells), columns)]
    header = "| " + " | ".join(["category", "AP"] * min(columns, len(cells))) + " |"
    lines = [header, "|" + "|".join([":---"] * 2 * min(columns, len(cells))) + "|"]
    lines += ["| " + " | ".join(f"{name} | {ap}" for name, ap in row) + " |" for row in rows]
    return "\n".join(lines)
