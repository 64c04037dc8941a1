"""COCO scoring at COCO-val size: pycocotools (as detectron2 runs it) against ours, same run.

Generates a COCO-val-sized set (``orchestrator.evaluation.synth``: 5,000 640x480 images, 100
detections each with RLE masks, crowd regions, empty images, images without detections, tied
scores, 80 categories as in COCO, one of them without ground truth), writes the ground truth
json, then scores bbox and segm with

* pycocotools: ``COCOeval`` evaluate/accumulate/summarize per task, detectron2's way (masks
  scored without their boxes);
* ours: ``orchestrator.evaluation.scoring`` (faster-coco-eval), what ``ChunkedCOCOEvaluator``
  runs on rank 0.

Timed: scoring only (both load the ground truth once beforehand, as the evaluators do at
construction; those loads are printed too). ``stats equal`` compares all 12 COCO stats of both
tasks and the per-category AP as printed (pycocotools' ``%0.3f`` summary and detectron2's
``%.3f`` percent tables); the largest absolute difference is printed beside it. The load
average is printed before and after (the machine may be shared).

    .venv/bin/python bench/coco_scoring.py [--images 5000] [--detections 100] [--classes 80]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TASKS = ("bbox", "segm")


def _pycocotools(path: Path, records: list[dict[str, Any]]) -> tuple[float, float, dict[str, Any]]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(path))
    load = time.perf_counter() - start
    evals, start = {}, time.perf_counter()
    for task in TASKS:
        # detectron2 deep-copies the records for segm and drops their boxes (timed here too).
        dts = copy.deepcopy(records) if task == "segm" else [dict(r) for r in records]
        if task == "segm":
            for record in dts:
                record.pop("bbox")
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval = COCOeval(ground_truth, ground_truth.loadRes(dts), task)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        evals[task] = coco_eval
    return load, time.perf_counter() - start, evals


def _ours(path: Path, records: list[dict[str, Any]]) -> tuple[float, float, dict[str, Any]]:
    from orchestrator.evaluation.scoring import evaluate_task, load_ground_truth

    start = time.perf_counter()
    ground_truth = load_ground_truth(path)
    load = time.perf_counter() - start
    start = time.perf_counter()
    evals = {task: evaluate_task(ground_truth, records, task) for task in TASKS}
    return load, time.perf_counter() - start, evals


def _printed(evals: dict[str, Any], names: list[str]) -> tuple[list[str], np.ndarray]:
    """What gets printed of both tasks (summary, percent stats, per-category AP) and the raw
    values behind it."""
    from orchestrator.evaluation.scoring import category_ap

    values: list[float] = []
    for task in TASKS:
        stats = [float(s) for s in evals[task].stats[:12]]
        values += stats + [s * 100 for s in stats]
        values += list(category_ap(evals[task], names).values())
    text = [f"{v:0.3f}" for v in values]
    return text, np.array(values)


def scoring_benchmark(num_images: int = 5000, *, detections_per_image: int = 100,
                      num_classes: int = 80, seed: int = 0) -> dict[str, Any]:
    """Score one generated set both ways; returns times (s), ``ratio`` (pycocotools / ours),
    ``stats_equal`` (as printed), ``max_abs_diff`` and ``bit_identical`` over those values."""
    from orchestrator.evaluation.synth import scoring_set

    start = time.perf_counter()
    data = scoring_set(num_images, detections_per_image=detections_per_image,
                       num_classes=num_classes, seed=seed)
    generated = time.perf_counter() - start
    names = [c["name"] for c in data.ground_truth["categories"]]
    with tempfile.TemporaryDirectory(prefix="coco-scoring-") as folder:
        path = Path(folder) / "instances.json"
        path.write_text(json.dumps(data.ground_truth), encoding="utf-8")
        ref_load, ref_s, ref = _pycocotools(path, data.records)
        ref_text, ref_values = _printed(ref, names)
        del ref
        our_load, our_s, ours = _ours(path, data.records)
        our_text, our_values = _printed(ours, names)
    both = ~(np.isnan(ref_values) & np.isnan(our_values))
    return {"images": num_images, "detections": len(data.records),
            "gt_instances": len(data.ground_truth["annotations"]), "generate_s": generated,
            "pycocotools_load_s": ref_load, "pycocotools_s": ref_s,
            "ours_load_s": our_load, "ours_s": our_s, "ratio": ref_s / our_s,
            "stats_equal": ref_text == our_text,
            "max_abs_diff": float(np.max(np.abs(ref_values[both] - our_values[both]))),
            "bit_identical": bool(np.array_equal(ref_values, our_values, equal_nan=True))}


def report_lines(r: dict[str, Any]) -> list[str]:
    """What ``scoring_benchmark`` found, as printed here and by ``bench/scale.py``."""
    return [
        f"set: {r['images']} images, {r['detections']} detections, {r['gt_instances']} "
        f"ground-truth instances (generated in {r['generate_s']:.1f} s)",
        f"ground truth load: pycocotools {r['pycocotools_load_s']:.2f} s, "
        f"ours {r['ours_load_s']:.2f} s",
        f"scoring bbox + segm: pycocotools {r['pycocotools_s']:.1f} s, ours {r['ours_s']:.1f} s",
        f"speed-up: {r['ratio']:.2f}x",
        f"stats equal: {'yes' if r['stats_equal'] else 'no'} (12 stats x 2 tasks and per-"
        f"category AP as printed; largest difference {r['max_abs_diff']:.1e}, bit-identical: "
        f"{'yes' if r['bit_identical'] else 'no'})",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="per image")
    parser.add_argument("--classes", type=int, default=80, help="COCO has 80")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load_before = os.getloadavg()
    r = scoring_benchmark(args.images, detections_per_image=args.detections,
                          num_classes=args.classes, seed=args.seed)
    load_after = os.getloadavg()
    for line in report_lines(r):
        print(line)
    print("load average (1/5/15 min): before " + " ".join(f"{x:.2f}" for x in load_before)
          + ", after " + " ".join(f"{x:.2f}" for x in load_after) + f" on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
