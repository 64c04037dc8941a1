"""score_coco gives pycocotools' numbers (run as detectron2 runs it) on a set made to trip it."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from detectron2.evaluation.coco_evaluation import COCOevalMaxDets
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from orchestrator.evaluation.scoring import METRICS, evaluate_task, load_ground_truth, score_coco
from orchestrator.evaluation.synth import ScoringSet, scoring_set
from tests.evaluation.coco_compare import assert_same_precision, assert_same_printed


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[ScoringSet, Path]:
    data = scoring_set(60, detections_per_image=40, seed=3)
    path = tmp_path_factory.mktemp("scoring") / "gt.json"
    path.write_text(json.dumps(data.ground_truth), encoding="utf-8")
    return data, path


def _reference(path: Path, records: list[dict[str, Any]], task: str,
               max_dets: int = 100) -> COCOeval:
    """pycocotools as detectron2 drives it (``use_fast_impl=False``)."""
    records = copy.deepcopy(records)
    if task == "segm":
        for record in records:
            record.pop("bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(path))
        cls = COCOeval if max_dets == 100 else COCOevalMaxDets
        coco_eval = cls(ground_truth, ground_truth.loadRes(records), task)
        coco_eval.params.maxDets = [1, 10, max_dets]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def _detectron2_results(coco_eval: COCOeval, names: list[str]) -> dict[str, float]:
    """detectron2's ``COCOEvaluator`` results from a pycocotools evaluation."""
    stats = coco_eval.stats[:len(METRICS)]
    results = {m: float(s * 100 if s >= 0 else "nan") for m, s in zip(METRICS, stats, strict=True)}
    for idx, name in enumerate(names):
        precision = coco_eval.eval["precision"][:, :, idx, 0, -1]
        precision = precision[precision > -1]
        results[f"AP-{name}"] = float((np.mean(precision) if precision.size else math.nan) * 100)
    return results


def test_the_set_has_the_hard_cases(generated: tuple[ScoringSet, Path]) -> None:
    data, _ = generated
    anns, images = data.ground_truth["annotations"], data.ground_truth["images"]
    with_gt, with_dets = {a["image_id"] for a in anns}, {r["image_id"] for r in data.records}
    assert any(a["iscrowd"] for a in anns)
    assert any(i["id"] not in with_gt and i["id"] in with_dets for i in images)
    assert any(i["id"] in with_gt and i["id"] not in with_dets for i in images)
    assert {c["id"] for c in data.ground_truth["categories"]} - {a["category_id"] for a in anns}
    assert len({r["score"] for r in data.records}) < len(data.records)  # tied scores


@pytest.mark.parametrize("task", ["bbox", "segm"])
def test_same_accumulation_as_pycocotools(generated: tuple[ScoringSet, Path], task: str) -> None:
    data, path = generated
    reference = _reference(path, data.records, task)
    ours = evaluate_task(load_ground_truth(path), data.records, task)
    assert_same_precision(ours.eval["precision"], reference.eval["precision"])
    np.testing.assert_array_equal(ours.eval["recall"], reference.eval["recall"])
    np.testing.assert_allclose(ours.stats[:12], reference.stats, rtol=0, atol=1e-15)
    assert [f"{s:0.3f}" for s in ours.stats[:12]] == [f"{s:0.3f}" for s in reference.stats]


@pytest.mark.parametrize("max_dets", [100, 10])
def test_same_results_as_detectron2_with_pycocotools(generated: tuple[ScoringSet, Path],
                                                     max_dets: int) -> None:
    data, path = generated
    names = [c["name"] for c in data.ground_truth["categories"]]
    records = copy.deepcopy(data.records)
    got = score_coco(load_ground_truth(path), records, class_names=names,
                     max_dets_per_image=max_dets)
    expected = {task: _detectron2_results(_reference(path, data.records, task, max_dets), names)
                for task in ("bbox", "segm")}
    assert_same_printed(got, expected)
    assert math.isnan(got["segm"][f"AP-{names[-1]}"])  # a category without ground truth
    assert 0 < got["segm"]["AP50"] < 100 and records == data.records  # records left alone


def test_no_predictions_give_nan(generated: tuple[ScoringSet, Path]) -> None:
    _, path = generated
    results = score_coco(load_ground_truth(path), [], class_names=["a", "b"])
    assert list(results) == ["bbox"] and all(math.isnan(v) for v in results["bbox"].values())
