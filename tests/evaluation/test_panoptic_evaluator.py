"""PanopticEvaluator on two hand-made images registered in detectron2's catalogs: PQ and mIoU
worked out by hand (comments), category mapping, void and crowd, merge and export."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.data.panoptic import (
    check_panoptic,
    read_panoptic_png,
    write_panoptic_png,
    write_semantic_maps,
)
from orchestrator.evaluation.panoptic_evaluator import (
    PREDICTIONS_DIR,
    PREDICTIONS_JSON,
    PanopticEvaluator,
    segment_extents,
)

# Dataset category ids are deliberately not the model's: things person 10 -> class 0,
# car 20 -> class 1; stuff sky 30 -> label 1, grass 40 -> label 2 (0 = "things").
CATEGORIES = [{"id": 10, "name": "person", "isthing": 1}, {"id": 20, "name": "car", "isthing": 1},
              {"id": 30, "name": "sky", "isthing": 0}, {"id": 40, "name": "grass", "isthing": 0}]
_names = itertools.count()


def grid(text: str, legend: dict[str, int]) -> np.ndarray:
    """An id map from rows of letters ('.' is 0)."""
    return np.array([[legend.get(c, 0) for c in line.split()]
                     for line in text.strip().splitlines()], dtype=np.int32)


# Image 1 (4 x 6). Ground truth: S sky id 1 (10 px), '.' VOID (2 px), P person 2 (4 px),
# C car 3 (2 px), X crowd car 5 (2 px), G grass 4 (4 px).
GT1 = grid("""
S S S S S S
S S S S . .
P P C C G G
P P X X G G
""", {"S": 1, "P": 2, "C": 3, "G": 4, "X": 5})
GT1_SEGMENTS = [{"id": 1, "category_id": 30, "iscrowd": 0}, {"id": 2, "category_id": 10,
                "iscrowd": 0}, {"id": 3, "category_id": 20, "iscrowd": 0},
                {"id": 4, "category_id": 40, "iscrowd": 0}, {"id": 5, "category_id": 20,
                "iscrowd": 1}]
# Prediction, in model classes:
#   s sky (stuff 1) id 7, 12 px: 10 on sky + 2 on VOID: IoU = 10 / (10 + 12 - 10 - 2) = 1 -> TP.
#   p person (thing 0) id 3, 5 px: 4 on person + 1 on car: IoU = 4 / (4 + 5 - 4) = 0.8 -> TP.
#   c car (thing 1) id 4, 3 px: 1 on car, 2 on the crowd car: IoU with the car = 1 / (2 + 3 - 1)
#     = 0.25 -> the car is a FN; c is 2/3 same-category crowd (> 1/2) -> not a FP.
#   g grass (stuff 2) id 9: exactly the grass -> IoU 1 -> TP.
PRED1 = grid("""
s s s s s s
s s s s s s
p p p c g g
p p c c g g
""", {"s": 7, "p": 3, "c": 4, "g": 9})
PRED1_SEGMENTS = [{"id": 7, "isthing": False, "category_id": 1, "area": 12},
                  {"id": 3, "isthing": True, "category_id": 0, "area": 5, "score": 0.9},
                  {"id": 4, "isthing": True, "category_id": 1, "area": 3, "score": 0.8},
                  {"id": 9, "isthing": False, "category_id": 2, "area": 4}]
# Semantic head labels of image 1 (0 things, 1 sky, 2 grass); the stuff map of the ground
# truth is sky 1 (10 px), 255 on VOID, 0 on person/car/crowd (8 px), grass 2 (4 px).
LABELS1 = grid("""
1 1 1 1 1 1
1 1 1 1 1 1
0 0 0 2 2 2
0 0 0 0 2 2
""", {str(i): i for i in range(3)})

# Image 2 (2 x 4). Ground truth: G grass id 1 (4 px), P person 2 (2 px), VOID 2 px.
GT2 = grid("""
G G G G
P P . .
""", {"G": 1, "P": 2})
GT2_SEGMENTS = [{"id": 1, "category_id": 40, "iscrowd": 0},
                {"id": 2, "category_id": 10, "iscrowd": 0}]
# Prediction:
#   s sky id 1 (2 px, on grass): no sky in the ground truth, not on VOID -> FP sky.
#   g grass id 2 (2 px on grass): IoU = 2 / (4 + 2 - 2) = 0.5, not > 0.5 -> FP grass, FN grass.
#   p person id 3 (4 px): 2 on person, 2 on VOID: IoU = 2 / (2 + 4 - 2 - 2) = 1 -> TP.
PRED2 = grid("""
s s g g
p p p p
""", {"s": 1, "g": 2, "p": 3})
PRED2_SEGMENTS = [{"id": 1, "isthing": False, "category_id": 1, "area": 2},
                  {"id": 2, "isthing": False, "category_id": 2, "area": 2},
                  {"id": 3, "isthing": True, "category_id": 0, "area": 4, "score": 0.7}]
LABELS2 = grid("""
1 1 2 2
0 0 0 0
""", {str(i): i for i in range(3)})

# Per category over both images (x100):
#   person TP 2 (IoU 0.8 + 1.0): PQ = 1.8 / 2 = 90, SQ 90, RQ 100.
#   car    FN 1:                PQ 0, SQ 0, RQ 0.
#   sky    TP 1 (1.0), FP 1:    PQ = 1 / 1.5 = 66.667, SQ 100, RQ 66.667.
#   grass  TP 1 (1.0), FP 1, FN 1: PQ = 1 / 2 = 50, SQ 100, RQ 50.
EXPECTED_PQ = {
    "PQ": (90 + 0 + 200 / 3 + 50) / 4, "SQ": (90 + 0 + 100 + 100) / 4,
    "RQ": (100 + 0 + 200 / 3 + 50) / 4,
    "PQ_th": 45.0, "SQ_th": 45.0, "RQ_th": 50.0,
    "PQ_st": (200 / 3 + 50) / 2, "SQ_st": 100.0, "RQ_st": (200 / 3 + 50) / 2,
}
# Semantic confusion (ground truth -> prediction, VOID left out):
#   image 1: 1->1 10, 0->0 7, 0->2 1, 2->2 4; image 2: 2->1 2, 2->2 2, 0->0 2.
#   class 0: 9 / (10 + 9 - 9) = 90; class 1: 10 / (10 + 12 - 10) = 83.333;
#   class 2: 6 / (8 + 7 - 6) = 66.667. mIoU (all 3) = 80, stuff only (1, 2) = 75.
EXPECTED_MIOU = {"mIoU": 80.0, "mIoU_stuff": 75.0}


def register(root: Path, *, with_stuff_maps: bool = True) -> str:
    """The two images as a panoptic dataset in detectron2's catalogs (contract section 1)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    pngs = root / "panoptic"
    pngs.mkdir(parents=True)
    document: dict[str, Any] = {"images": [], "annotations": [], "categories": CATEGORIES}
    for image_id, (ids, segments) in enumerate(((GT1, GT1_SEGMENTS), (GT2, GT2_SEGMENTS)), 1):
        write_panoptic_png(pngs / f"{image_id}.png", ids)
        document["images"].append({"id": image_id, "file_name": f"{image_id}.jpg",
                                   "height": ids.shape[0], "width": ids.shape[1]})
        document["annotations"].append({"image_id": image_id, "file_name": f"{image_id}.png",
                                        "segments_info": segments})
    panoptic_json = root / "panoptic.json"
    panoptic_json.write_text(json.dumps(document), encoding="utf-8")
    if with_stuff_maps:
        write_semantic_maps(panoptic_json, pngs, root / "stuff")
    name = f"test_panoptic_evaluator_{next(_names)}"
    DatasetCatalog.register(name, lambda: [{"image_id": i} for i in (1, 2)])
    MetadataCatalog.get(name).set(
        thing_classes=["person", "car"], thing_dataset_id_to_contiguous_id={10: 0, 20: 1},
        stuff_classes=["things", "sky", "grass"],
        stuff_dataset_id_to_contiguous_id={30: 1, 40: 2}, json_file=str(root / "unused.json"),
        image_root=str(root), panoptic_root=str(pngs), panoptic_json=str(panoptic_json),
        sem_seg_root=str(root / "stuff") if with_stuff_maps else None, ignore_label=255)
    return name


def output(ids: np.ndarray, segments: list[dict[str, Any]],
           labels: np.ndarray | None) -> dict[str, Any]:
    """A model output dict as contract section 3 specifies it."""
    out: dict[str, Any] = {"panoptic_seg": (torch.from_numpy(ids), segments)}
    if labels is not None:
        out["sem_seg_labels"] = torch.from_numpy(labels.astype(np.uint8))
    return out


IMAGE1 = ({"image_id": 1}, output(PRED1, PRED1_SEGMENTS, LABELS1))
IMAGE2 = ({"image_id": 2}, output(PRED2, PRED2_SEGMENTS, LABELS2))


def evaluate(evaluator: PanopticEvaluator, *images: tuple[dict[str, Any], dict[str, Any]]
             ) -> dict[str, Any]:
    evaluator.reset()
    for inp, out in images:
        evaluator.process([inp], [out])
    return evaluator.evaluate()


def assert_close(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_pq_and_miou_match_the_hand_computed_values(tmp_path: Path) -> None:
    evaluator = PanopticEvaluator(register(tmp_path), distributed=False)
    results = evaluate(evaluator, IMAGE1, IMAGE2)
    assert_close(results["panoptic_seg"], EXPECTED_PQ)
    assert_close(results["sem_seg"], EXPECTED_MIOU)


def test_gathered_and_merged_counts_give_the_same_results(tmp_path: Path) -> None:
    name = register(tmp_path)
    # One process: detectron2's gather returns this rank's own state.
    gathered = evaluate(PanopticEvaluator(name, distributed=True), IMAGE1, IMAGE2)
    first, second = PanopticEvaluator(name, distributed=False), PanopticEvaluator(name)
    for evaluator, image in ((first, IMAGE1), (second, IMAGE2)):
        evaluator.reset()
        evaluator.process([image[0]], [image[1]])
    first.merge(second)
    merged = first.evaluate()
    for results in (gathered, merged):
        assert_close(results["panoptic_seg"], EXPECTED_PQ)
        assert_close(results["sem_seg"], EXPECTED_MIOU)


def test_reset_starts_a_new_evaluation(tmp_path: Path) -> None:
    evaluator = PanopticEvaluator(register(tmp_path), distributed=False)
    evaluate(evaluator, IMAGE1, IMAGE2)
    # Image 2 alone: person TP (IoU 1) -> 100; sky FP -> 0; grass FP + FN -> 0.
    alone = evaluate(evaluator, IMAGE2)["panoptic_seg"]
    assert alone["PQ_th"] == pytest.approx(100.0) and alone["PQ_st"] == pytest.approx(0.0)
    assert alone["PQ"] == pytest.approx(100 / 3)


def test_stuff_maps_are_derived_from_the_pngs_without_sem_seg_root(tmp_path: Path) -> None:
    evaluator = PanopticEvaluator(register(tmp_path, with_stuff_maps=False), distributed=False)
    assert_close(evaluate(evaluator, IMAGE1, IMAGE2)["sem_seg"], EXPECTED_MIOU)


def test_semantic_logits_are_scored_by_their_argmax(tmp_path: Path) -> None:
    """detectron2's own PanopticFPN returns float ``sem_seg`` logits, not labels."""
    evaluator = PanopticEvaluator(register(tmp_path), distributed=False)
    logits = [torch.nn.functional.one_hot(torch.from_numpy(labels).long(), 3)
              .permute(2, 0, 1).float() for labels in (LABELS1, LABELS2)]
    images = [({"image_id": i}, {**{k: v for k, v in out.items() if k != "sem_seg_labels"},
                                 "sem_seg": logit})
              for i, (_, out), logit in zip((1, 2), (IMAGE1, IMAGE2), logits, strict=True)]
    assert_close(evaluate(evaluator, *images)["sem_seg"], EXPECTED_MIOU)


def test_without_semantic_labels_only_pq_is_reported(tmp_path: Path) -> None:
    evaluator = PanopticEvaluator(register(tmp_path), distributed=False)
    results = evaluate(evaluator, ({"image_id": 1}, output(PRED1, PRED1_SEGMENTS, None)))
    assert set(results) == {"panoptic_seg"}
    # Image 1 alone: person 80, car 0 -> things 40; sky 100, grass 100 -> stuff 100.
    assert results["panoptic_seg"]["PQ_th"] == pytest.approx(40.0)
    assert results["panoptic_seg"]["PQ_st"] == pytest.approx(100.0)


def test_outputs_without_panoptic_seg_give_no_results(tmp_path: Path) -> None:
    evaluator = PanopticEvaluator(register(tmp_path), distributed=False)
    assert evaluate(evaluator, ({"image_id": 1}, {"instances": None})) == {}


def test_a_class_the_dataset_lacks_is_an_error(tmp_path: Path) -> None:
    evaluator = PanopticEvaluator(register(tmp_path), distributed=False)
    bad = [{**s, "category_id": 5} if s["id"] == 7 else s for s in PRED1_SEGMENTS]
    with pytest.raises(ValueError, match="stuff segment has class 5"):
        evaluator.process([{"image_id": 1}], [output(PRED1, bad, LABELS1)])


def test_a_dataset_without_panoptic_json_is_refused() -> None:
    from detectron2.data import MetadataCatalog

    name = f"test_panoptic_evaluator_plain_{next(_names)}"
    MetadataCatalog.get(name).set(thing_classes=["a"])
    with pytest.raises(ValueError, match="not a panoptic dataset"):
        PanopticEvaluator(name)


def test_exported_predictions_pass_our_check_and_detectron2s_reader(tmp_path: Path) -> None:
    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

    out = tmp_path / "out"
    evaluator = PanopticEvaluator(register(tmp_path / "data"), distributed=False,
                                  output_dir=str(out))
    evaluate(evaluator, IMAGE1, IMAGE2)
    json_file, pngs = out / PREDICTIONS_JSON, out / PREDICTIONS_DIR
    assert check_panoptic(json_file, pngs) == []
    np.testing.assert_array_equal(read_panoptic_png(pngs / "1.png"), PRED1)
    document = json.loads(json_file.read_text(encoding="utf-8"))
    person = next(s for s in document["annotations"][0]["segments_info"] if s["id"] == 3)
    # Dataset ids; the person covers rows 2-3, cols 0-2 minus one pixel.
    assert person == {"id": 3, "category_id": 10, "iscrowd": 0, "area": 5, "bbox": [0, 2, 3, 2]}
    meta = {"thing_dataset_id_to_contiguous_id": {10: 0, 20: 1},
            "stuff_dataset_id_to_contiguous_id": {30: 1, 40: 2}}
    for image in document["images"]:  # the reader checks that the (COCO: .jpg) images exist
        Image.fromarray(np.zeros((image["height"], image["width"], 3), np.uint8)).save(
            tmp_path / "data" / image["file_name"])
    loaded = load_coco_panoptic_json(str(json_file), str(tmp_path / "data"), str(pngs), meta)
    assert [d["image_id"] for d in loaded] == [1, 2]
    assert [(s["category_id"], s["isthing"]) for s in loaded[1]["segments_info"]] == \
        [(1, False), (2, False), (0, True)]
    assert not list(out.rglob("*.tmp"))  # every file was renamed into place


def test_segment_extents_give_area_and_inclusive_box() -> None:
    ids = np.zeros((5, 7), dtype=np.int32)
    ids[1:4, 2:6] = 3
    ids[4, 6] = 9
    assert segment_extents(ids) == {3: (12, [2, 1, 4, 3]), 9: (1, [6, 4, 1, 1])}
    big = ids.astype(np.int64) * 1_000_000  # ids as large as a COCO PNG's are renumbered
    assert segment_extents(big) == {3_000_000: (12, [2, 1, 4, 3]),
                                    9_000_000: (1, [6, 4, 1, 1])}
    assert math.isfinite(sum(a for a, _ in segment_extents(ids).values()))
