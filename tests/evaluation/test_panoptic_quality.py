"""PQ / SQ / RQ and mIoU on small maps whose values are worked out by hand in the comments."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from orchestrator.evaluation.panoptic_quality import PanopticQuality, PQStats, SemanticIoU

# person and car are things; sky, grass and road are stuff; road and dog appear nowhere.
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 3, "name": "sky", "isthing": 0},
    {"id": 4, "name": "grass", "isthing": 0},
    {"id": 5, "name": "road", "isthing": 0},
    {"id": 6, "name": "dog", "isthing": 1},
]


def _ids(grid: str, legend: dict[str, int]) -> np.ndarray:
    """An id map from rows of letters ('.' is 0), as uint32 like a decoded panoptic PNG."""
    rows = [line.split() for line in grid.strip().splitlines()]
    return np.array([[legend.get(cell, 0) for cell in row] for row in rows], dtype=np.uint32)


def _segment(ident: int, category: int, iscrowd: int = 0) -> dict[str, Any]:
    return {"id": ident, "category_id": category, "iscrowd": iscrowd}


# Image 1 (6 x 6). Ground truth, with ids as big as a COCO PNG gives (R + 256 G + 256^2 B):
#   S sky 3_000_001 (10 px), P person 5_000_002 (4 px), C car 7_000_003 (4 px),
#   X person crowd 9_000_004 (4 px), G grass 11_000_005 (8 px), '.' VOID (6 px).
GT1 = """
S S S S S S
S S S S . .
P P C C . .
P P C C X X
G G G G X X
G G G G . .
"""
GT1_LEGEND = {"S": 3_000_001, "P": 5_000_002, "C": 7_000_003, "X": 9_000_004, "G": 11_000_005}
GT1_SEGMENTS = [_segment(3_000_001, 3), _segment(5_000_002, 1), _segment(7_000_003, 2),
                _segment(9_000_004, 1, iscrowd=1), _segment(11_000_005, 4)]
# Prediction:
#   s sky 15: row 0 and row 1 cols 0-1 of sky (8 px) + the 2 VOID px of row 1: area 10.
#     IoU = 8 / (10 + 10 - 8 - 2 VOID) = 8 / 10 = 0.8 -> TP (0.667 if VOID stayed in the union).
#   p person 11: exactly the person -> IoU 1 -> TP.
#   c car 12: the car's left column (2 px): IoU = 2 / (4 + 2 - 2) = 0.5, not > 0.5 -> no match,
#     so the car is a FN and c a FP (it lies on the car, not on VOID).
#   v person 13: 1 sky px + 2 VOID px: 2/3 VOID > 1/2 -> not a FP.
#   w person 14: 1 crowd-person px + 1 VOID px + 1 grass px: neither alone is over half, together
#     2/3 > 1/2 -> not a FP.
#   The crowd person is unmatched but crowd -> not a FN. Grass has no prediction -> FN.
PRED1 = """
s s s s s s
s s . v s s
p p c . v v
p p c . w .
. . . . . .
. . . w w .
"""
PRED1_LEGEND = {"s": 15, "p": 11, "c": 12, "v": 13, "w": 14}
PRED1_SEGMENTS = [_segment(15, 3), _segment(11, 1), _segment(12, 2), _segment(13, 1),
                  _segment(14, 1)]

# Image 2 (4 x 4). Ground truth: C car 1 (4 px), P person 2 (4 px), S sky 3 (4 px), VOID 4 px.
GT2 = """
C C . .
C C . .
P P S S
P P S S
"""
GT2_LEGEND = {"C": 1, "P": 2, "S": 3}
GT2_SEGMENTS = [_segment(1, 2), _segment(2, 1), _segment(3, 3)]
# Prediction:
#   a car 21: 3 car px + 1 VOID px: IoU = 3 / (4 + 4 - 3 - 1) = 0.75 -> TP.
#   b car 22: 1 car px + 1 VOID px: the car is taken (IoU 1 / (2 + 4 - 1 - 1) = 0.25); VOID is
#     exactly half, not more -> FP.
#   k sky 23: the 4 sky px + 1 person px: IoU = 4 / (5 + 4 - 4) = 0.8 -> TP.
#   The person is left with no prediction -> FN.
PRED2 = """
a a a .
a b b .
k . k k
. . k k
"""
PRED2_LEGEND = {"a": 21, "b": 22, "k": 23}
PRED2_SEGMENTS = [_segment(21, 2), _segment(22, 2), _segment(23, 3)]


def _add_image1(quality: PanopticQuality) -> None:
    quality.add(_ids(GT1, GT1_LEGEND), GT1_SEGMENTS, _ids(PRED1, PRED1_LEGEND), PRED1_SEGMENTS)


def _add_image2(quality: PanopticQuality) -> None:
    quality.add(_ids(GT2, GT2_LEGEND), GT2_SEGMENTS, _ids(PRED2, PRED2_LEGEND), PRED2_SEGMENTS)


def _assert_stats(stats: PQStats, pq: float, sq: float, rq: float, n: int) -> None:
    assert (stats.pq, stats.sq, stats.rq, stats.n) == (
        pytest.approx(pq), pytest.approx(sq), pytest.approx(rq), n)


def test_one_image_counts_and_values() -> None:
    quality = PanopticQuality()
    _add_image1(quality)
    counts = {c: (n.tp, n.fp, n.fn, n.iou) for c, n in quality.counts.items()}
    assert counts == {1: (1, 0, 0, pytest.approx(1.0)), 2: (0, 1, 1, 0.0),
                      3: (1, 0, 0, pytest.approx(0.8)), 4: (0, 0, 1, 0.0)}
    summary = quality.summarize(CATEGORIES)
    # person 1/1/1, car 0/0/0, sky 0.8/0.8/1, grass 0/0/0; road and dog are not counted.
    _assert_stats(summary.all, pq=45.0, sq=45.0, rq=50.0, n=4)  # (1 + 0.8) / 4, 2 / 4
    _assert_stats(summary.things, pq=50.0, sq=50.0, rq=50.0, n=2)
    _assert_stats(summary.stuff, pq=40.0, sq=40.0, rq=50.0, n=2)
    assert sorted(summary.per_category) == [1, 2, 3, 4]


def test_two_images_accumulate() -> None:
    quality = PanopticQuality()
    _add_image1(quality)
    _add_image2(quality)
    summary = quality.summarize(CATEGORIES)
    # person: TP 1 (IoU 1), FN 1 -> PQ = 1 / 1.5 = 2/3, SQ = 1, RQ = 2/3.
    _assert_stats(summary.per_category[1], pq=200 / 3, sq=100.0, rq=200 / 3, n=1)
    # car: TP 1 (0.75), FP 2, FN 1 -> denominator 1 + 1 + 0.5 = 2.5: PQ 0.3, SQ 0.75, RQ 0.4.
    _assert_stats(summary.per_category[2], pq=30.0, sq=75.0, rq=40.0, n=1)
    # sky: TP 2 (0.8 + 0.8) -> PQ 0.8, SQ 0.8, RQ 1. grass: FN 1 -> 0, 0, 0.
    _assert_stats(summary.per_category[3], pq=80.0, sq=80.0, rq=100.0, n=1)
    _assert_stats(summary.per_category[4], pq=0.0, sq=0.0, rq=0.0, n=1)
    # all: PQ (2/3 + 0.3 + 0.8 + 0) / 4, SQ (1 + 0.75 + 0.8) / 4, RQ (2/3 + 0.4 + 1) / 4.
    _assert_stats(summary.all, pq=(200 / 3 + 110) / 4, sq=63.75, rq=(200 / 3 + 140) / 4, n=4)
    _assert_stats(summary.things, pq=(200 / 3 + 30) / 2, sq=87.5, rq=(200 / 3 + 40) / 2, n=2)
    _assert_stats(summary.stuff, pq=40.0, sq=40.0, rq=50.0, n=2)
    assert summary.metrics() == {
        "PQ": summary.all.pq, "SQ": summary.all.sq, "RQ": summary.all.rq,
        "PQ_th": summary.things.pq, "SQ_th": summary.things.sq, "RQ_th": summary.things.rq,
        "PQ_st": 40.0, "SQ_st": 40.0, "RQ_st": 50.0}


def test_merge_gives_the_same_counts_as_one_accumulator() -> None:
    together, first, second = PanopticQuality(), PanopticQuality(), PanopticQuality()
    _add_image1(together)
    _add_image2(together)
    _add_image1(first)
    _add_image2(second)
    second.merge(first)
    assert second.summarize(CATEGORIES) == together.summarize(CATEGORIES)


def test_crowd_of_another_category_does_not_excuse_a_false_positive() -> None:
    # Ground truth: a person crowd (id 1) and VOID. A car over 3 crowd px + 1 VOID px is only
    # 1/4 VOID (the crowd is not its category) -> FP. A person over the same pixels would be
    # 4/4 ignored. The crowd is never a FN.
    gt = np.array([[1, 1, 1, 0]])
    crowd = [_segment(1, 1, iscrowd=1)]
    as_car, as_person = PanopticQuality(), PanopticQuality()
    as_car.add(gt, crowd, np.array([[7, 7, 7, 7]]), [_segment(7, 2)])
    as_person.add(gt, crowd, np.array([[7, 7, 7, 7]]), [_segment(7, 1)])
    assert {c: (n.tp, n.fp, n.fn) for c, n in as_car.counts.items()} == {2: (0, 1, 0)}
    assert as_person.counts == {}
    only_car = as_car.summarize(CATEGORIES)
    _assert_stats(only_car.things, pq=0.0, sq=0.0, rq=0.0, n=1)
    assert only_car.stuff.n == 0 and math.isnan(only_car.stuff.pq)
    assert as_person.summarize(CATEGORIES).all.n == 0


def test_crowd_ground_truth_is_never_matched() -> None:
    # A prediction equal to a crowd region is no TP (and, all on crowd, no FP either).
    quality = PanopticQuality()
    quality.add(np.array([[3, 3]]), [_segment(3, 1, iscrowd=1)], np.array([[5, 5]]),
                [_segment(5, 1)])
    assert quality.counts == {}


def test_void_stays_out_of_the_union_only_for_the_prediction_pixels_on_it() -> None:
    # gt thing 4 px; prediction 3 of them + 2 VOID px: IoU = 3 / (4 + 5 - 3 - 2) = 0.75.
    quality = PanopticQuality()
    quality.add(np.array([[1, 1, 1, 1, 0, 0]]), [_segment(1, 2)],
                np.array([[9, 9, 9, 0, 9, 9]]), [_segment(9, 2)])
    assert quality.counts[2].tp == 1 and quality.counts[2].iou == pytest.approx(0.75)


@pytest.mark.parametrize(("gt", "gt_segments", "pred", "pred_segments", "message"), [
    ([[1, 2]], [_segment(1, 1)], [[5, 5]], [_segment(5, 1)], r"ids \[2\] are in the id map"),
    ([[1, 1]], [_segment(1, 1)], [[5, 5]], [_segment(5, 1), _segment(6, 1)],
     r"segments \[6\] have no pixel"),
    ([[1, 1]], [_segment(1, 1)], [[5, 5, 5]], [_segment(5, 1)], "differ in shape"),
    ([[1, 1]], [_segment(1, 1), _segment(1, 2)], [[5, 5]], [_segment(5, 1)], "appears twice"),
    ([[0, 0]], [_segment(0, 1)], [[5, 5]], [_segment(5, 1)], r"is VOID \(0\)"),
    ([[1, -1]], [_segment(1, 1)], [[5, 5]], [_segment(5, 1)], "must lie in"),
])
def test_inconsistent_input_is_refused(gt: list[list[int]], gt_segments: list[dict[str, Any]],
                                       pred: list[list[int]], pred_segments: list[dict[str, Any]],
                                       message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PanopticQuality().add(np.array(gt), gt_segments, np.array(pred), pred_segments)


def test_unknown_category_is_refused_at_summary() -> None:
    quality = PanopticQuality()
    quality.add(np.array([[1]]), [_segment(1, 1)], np.array([[2]]), [_segment(2, 99)])
    with pytest.raises(ValueError, match=r"category ids \[99\]"):
        quality.summarize(CATEGORIES)


def test_semantic_iou_hand_case() -> None:
    # 5 classes (0 = things, 1-4 stuff); 255 is ignored whatever was predicted there.
    gt = np.array([[1, 1, 2, 2],
                   [0, 0, 255, 255],
                   [2, 2, 1, 1]], dtype=np.uint8)
    pred = np.array([[1, 2, 2, 2],
                     [0, 1, 0, 3],
                     [2, 3, 1, 1]], dtype=np.uint8)
    # counted (gt, pred): (1,1) (1,2) (2,2) (2,2) (0,0) (0,1) (2,2) (2,3) (1,1) (1,1)
    # class 0: TP 1, gt 2, pred 1 -> 1/2.      class 1: TP 3, gt 4, pred 4 -> 3/5.
    # class 2: TP 3, gt 4, pred 4 -> 3/5.      class 3: TP 0, gt 0, pred 1 -> 0 (counted).
    # class 4: in neither -> NaN, left out.    mIoU = (0.5 + 0.6 + 0.6 + 0) / 4 = 0.425.
    miou = SemanticIoU(5)
    miou.add(gt, pred)
    summary = miou.summarize()
    assert summary.miou == pytest.approx(42.5)
    assert summary.iou[:4] == pytest.approx((50.0, 60.0, 60.0, 0.0))
    assert math.isnan(summary.iou[4])
    other = SemanticIoU(5)
    other.add(gt, pred)
    miou.merge(other)  # the same image twice: the same ratios
    assert miou.summarize().miou == pytest.approx(42.5)
    assert int(miou.confusion.sum()) == 20


def test_semantic_iou_refuses_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"prediction labels must lie in \[0, 3\)"):
        SemanticIoU(3).add(np.array([[0, 1]]), np.array([[0, 3]]))
    with pytest.raises(ValueError, match=r"ground truth labels must lie in \[0, 3\)"):
        SemanticIoU(3).add(np.array([[7, 1]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="ignore_label"):
        SemanticIoU(3, ignore_label=2)
    assert math.isnan(SemanticIoU(3).summarize().miou)
