"""Panoptic quality (PQ, SQ, RQ) and semantic mIoU, accumulated one image at a time.

Why our own: the COCO panoptic API scores folders of PNG files after inference has finished;
during evaluation we already hold each image's segment-id maps in memory, so we count matches as
they come and keep only a few numbers per category.

The definition (Kirillov et al., "Panoptic Segmentation", CVPR 2019, with the COCO panoptic
API's rules):

* A predicted and a ground-truth segment of the same category match when their IoU is > 0.5;
  at that threshold a match is unique, so no assignment step is needed.
* VOID pixels (id 0, unlabeled) are left out of a match's union.
* A ground-truth segment marked ``iscrowd`` is never a false negative; an unmatched prediction
  whose area is more than half VOID or crowd of its own category (counted together) is not a
  false positive.
* Per category ``PQ = sum(IoU of TP) / (TP + FP/2 + FN/2)``, ``SQ = sum(IoU of TP) / TP`` (0
  without TP), ``RQ = TP / (TP + FP/2 + FN/2)``; a summary averages them over the categories
  with at least one TP, FP or FN, for all, things and stuff, times 100 as the COCO tool prints.

Two choices where the COCO API's code is narrower than its rule: areas come from the id maps
(not the json's ``area``), and all crowd regions of a category count, not only the last one.

Example:
    >>> quality = PanopticQuality()
    >>> for gt_ids, gt_segments, pred_ids, pred_segments in images:  # doctest: +SKIP
    ...     quality.add(gt_ids, gt_segments, pred_ids, pred_segments)
    >>> quality.summarize(categories).metrics()["PQ"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "VOID",
    "CategoryCounts",
    "PQStats",
    "PanopticSummary",
    "PanopticQuality",
    "SemanticSummary",
    "SemanticIoU",
]

VOID = 0
_MAX_ID = 2**31  # two ids below it combine into one int64 without overflow

Segments = Sequence[Mapping[str, Any]]
Overlaps = dict[tuple[int, int], int]


@dataclass
class CategoryCounts:
    """Running counts of one category: matches, misses and the IoU summed over matches."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou: float = 0.0


@dataclass(frozen=True)
class PQStats:
    """PQ, SQ and RQ in percent, averaged over ``n`` categories (NaN when ``n`` is 0)."""

    pq: float
    sq: float
    rq: float
    n: int


@dataclass(frozen=True)
class PanopticSummary:
    """The averages the COCO tool prints, plus each counted category's own values."""

    all: PQStats
    things: PQStats
    stuff: PQStats
    per_category: dict[int, PQStats]

    def metrics(self) -> dict[str, float]:
        """Flat names as detectron2's panoptic evaluator reports them (``PQ``, ``SQ_th``...),
        so runs compare with detectron2's own numbers side by side."""
        out: dict[str, float] = {}
        for suffix, stats in (("", self.all), ("_th", self.things), ("_st", self.stuff)):
            out.update({f"PQ{suffix}": stats.pq, f"SQ{suffix}": stats.sq,
                        f"RQ{suffix}": stats.rq})
        return out


@dataclass(frozen=True)
class _Segment:
    category: int
    iscrowd: bool


def _segment_table(segments: Segments, side: str) -> dict[int, _Segment]:
    """Segment id -> category and crowd flag; an id given twice, or VOID, is an error because
    the id map could not tell such segments apart."""
    table: dict[int, _Segment] = {}
    for segment in segments:
        ident = int(segment["id"])
        if ident == VOID or ident in table:
            reason = "is VOID (0)" if ident == VOID else "appears twice"
            raise ValueError(f"{side} segment id {ident} {reason}; segment ids must be unique "
                             "and non-zero")
        table[ident] = _Segment(int(segment["category_id"]), bool(segment.get("iscrowd", 0)))
    return table


def _as_ids(ids: npt.ArrayLike, side: str) -> npt.NDArray[np.int64]:
    array = np.asarray(ids)
    if array.size and (array.min() < 0 or array.max() >= _MAX_ID):
        raise ValueError(f"{side} ids must lie in [0, 2**31), got {array.min()}..{array.max()}")
    return array.astype(np.int64, copy=False)


def _overlaps(gt_ids: npt.ArrayLike, pred_ids: npt.ArrayLike) -> Overlaps:
    """Pixel count of every (ground-truth id, predicted id) pair that shares pixels: both maps
    fold into one int64 array and one ``np.unique`` counts it, with no loop over pixels."""
    gt, pred = _as_ids(gt_ids, "ground-truth"), _as_ids(pred_ids, "prediction")
    if gt.shape != pred.shape:
        raise ValueError(f"ground-truth ids {gt.shape} and predicted ids {pred.shape} differ in "
                         "shape; both must cover the same image")
    offset = int(pred.max(initial=0)) + 1
    joint, counts = np.unique(gt * offset + pred, return_counts=True)
    return {(int(j) // offset, int(j) % offset): int(c)
            for j, c in zip(joint.tolist(), counts.tolist(), strict=True)}


def _areas(overlaps: Overlaps, table: dict[int, _Segment], axis: int, side: str) -> Counter[int]:
    """Each segment's area from the id map, checked against the segment list: a pixel of an
    unlisted id, or a listed segment with no pixel, means the two do not belong together."""
    areas: Counter[int] = Counter()
    for pair, count in overlaps.items():
        areas[pair[axis]] += count
    unlisted = sorted(set(areas) - set(table) - {VOID})
    absent = sorted(set(table) - set(areas))
    if unlisted or absent:
        raise ValueError(f"{side}: ids {unlisted} are in the id map but not in the segments, "
                         f"segments {absent} have no pixel; pass the segments of this id map")
    return areas


class PanopticQuality:
    """Accumulates PQ counts image by image; ``summarize`` turns them into PQ, SQ and RQ.

    Holds four numbers per category, so a whole dataset costs no memory beyond one image's id
    maps. ``merge`` adds another accumulator's counts (e.g. one gathered from each worker).
    """

    def __init__(self) -> None:
        self.counts: dict[int, CategoryCounts] = {}

    def _of(self, category: int) -> CategoryCounts:
        return self.counts.setdefault(category, CategoryCounts())

    def add(self, gt_ids: npt.ArrayLike, gt_segments: Segments,
            pred_ids: npt.ArrayLike, pred_segments: Segments) -> None:
        """Count one image.

        Args:
            gt_ids, pred_ids: ``(H, W)`` integer segment-id maps of the same shape; 0 is VOID
                (in a prediction: pixels given to no segment).
            gt_segments, pred_segments: COCO ``segments_info`` entries: ``id``,
                ``category_id`` and, for ground truth, ``iscrowd`` (0 when absent).
        """
        gt = _segment_table(gt_segments, "ground truth")
        pred = _segment_table(pred_segments, "prediction")
        overlaps = _overlaps(gt_ids, pred_ids)
        gt_area = _areas(overlaps, gt, 0, "ground truth")
        pred_area = _areas(overlaps, pred, 1, "prediction")
        matched = self._count_matches(overlaps, gt, pred, gt_area, pred_area)
        self._count_misses(gt, {g for g, _ in matched})
        self._count_false_positives(overlaps, gt, pred, pred_area, {p for _, p in matched})

    def _count_matches(self, overlaps: Overlaps, gt: dict[int, _Segment],
                       pred: dict[int, _Segment], gt_area: Counter[int],
                       pred_area: Counter[int]) -> list[tuple[int, int]]:
        """True positives: same category, not crowd, IoU > 0.5 with VOID out of the union."""
        matched = []
        for (g, p), inter in overlaps.items():
            if g == VOID or p == VOID or gt[g].iscrowd or gt[g].category != pred[p].category:
                continue
            union = gt_area[g] + pred_area[p] - inter - overlaps.get((VOID, p), 0)
            iou = inter / union
            if iou > 0.5:
                counts = self._of(gt[g].category)
                counts.tp += 1
                counts.iou += iou
                matched.append((g, p))
        return matched

    def _count_misses(self, gt: dict[int, _Segment], matched: set[int]) -> None:
        """False negatives: unmatched ground truth, crowd regions excepted."""
        for ident, segment in gt.items():
            if ident not in matched and not segment.iscrowd:
                self._of(segment.category).fn += 1

    def _count_false_positives(self, overlaps: Overlaps, gt: dict[int, _Segment],
                               pred: dict[int, _Segment], pred_area: Counter[int],
                               matched: set[int]) -> None:
        """False positives: unmatched predictions, except those more than half on VOID and
        same-category crowd together (the annotators left those pixels open)."""
        ignored: Counter[int] = Counter()
        for (g, p), inter in overlaps.items():
            if p == VOID:
                continue
            if g == VOID or (gt[g].iscrowd and gt[g].category == pred[p].category):
                ignored[p] += inter
        for ident, segment in pred.items():
            if ident not in matched and ignored[ident] / pred_area[ident] <= 0.5:
                self._of(segment.category).fp += 1

    def merge(self, other: PanopticQuality) -> None:
        """Add ``other``'s counts to these (sums are exact, so the order does not matter)."""
        for category, theirs in other.counts.items():
            mine = self._of(category)
            mine.tp += theirs.tp
            mine.fp += theirs.fp
            mine.fn += theirs.fn
            mine.iou += theirs.iou

    def summarize(self, categories: Iterable[Mapping[str, Any]]) -> PanopticSummary:
        """PQ, SQ and RQ over all, thing and stuff categories.

        Args:
            categories: COCO panoptic categories (``id`` and ``isthing``). Every category
                counted so far must be among them: a prediction of an unknown category is
                an error, never silently dropped.
        """
        isthing = {int(c["id"]): bool(c["isthing"]) for c in categories}
        unknown = sorted(set(self.counts) - set(isthing))
        if unknown:
            raise ValueError(f"category ids {unknown} were counted but are not in the "
                             "categories; pass the dataset's full category list")
        per_category = {c: _category_stats(n) for c, n in sorted(self.counts.items())
                        if n.tp + n.fp + n.fn > 0}
        return PanopticSummary(
            all=_average(per_category.values()),
            things=_average(s for c, s in per_category.items() if isthing[c]),
            stuff=_average(s for c, s in per_category.items() if not isthing[c]),
            per_category=per_category,
        )


def _category_stats(counts: CategoryCounts) -> PQStats:
    denominator = counts.tp + 0.5 * counts.fp + 0.5 * counts.fn
    sq = counts.iou / counts.tp if counts.tp else 0.0
    return PQStats(pq=100 * counts.iou / denominator, sq=100 * sq,
                   rq=100 * counts.tp / denominator, n=1)


def _average(stats: Iterable[PQStats]) -> PQStats:
    """Mean over categories; NaN (not 0) when there is none, e.g. a set without stuff."""
    chosen = list(stats)
    if not chosen:
        return PQStats(pq=math.nan, sq=math.nan, rq=math.nan, n=0)
    n = len(chosen)
    return PQStats(pq=sum(s.pq for s in chosen) / n, sq=sum(s.sq for s in chosen) / n,
                   rq=sum(s.rq for s in chosen) / n, n=n)


@dataclass(frozen=True)
class SemanticSummary:
    """Mean IoU in percent over the classes present in ground truth or prediction, and each
    class's IoU (NaN for a class absent from both)."""

    miou: float
    iou: tuple[float, ...]


class SemanticIoU:
    """Accumulates a confusion matrix of semantic label maps (e.g. the stuff maps of panoptic
    FPN) for mIoU; pixels labelled ``ignore_label`` in ground truth are not counted.

    A class predicted but absent from the ground truth has IoU 0 and counts in the mean, as in
    detectron2's ``SemSegEvaluator``; one absent from both is left out.
    """

    def __init__(self, num_classes: int, *, ignore_label: int = 255) -> None:
        if num_classes < 1 or 0 <= ignore_label < num_classes:
            raise ValueError(f"num_classes must be >= 1 and ignore_label ({ignore_label}) "
                             f"outside [0, {num_classes}), got num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, gt: npt.ArrayLike, pred: npt.ArrayLike) -> None:
        """Count one image: ``gt`` and ``pred`` are label maps of the same shape."""
        gt_labels, pred_labels = np.asarray(gt), np.asarray(pred)
        if gt_labels.shape != pred_labels.shape:
            raise ValueError(f"ground truth {gt_labels.shape} and prediction "
                             f"{pred_labels.shape} differ in shape")
        valid = gt_labels != self.ignore_label
        gt_valid = gt_labels[valid].astype(np.int64)
        pred_valid = pred_labels[valid].astype(np.int64)
        for side, labels in (("ground truth", gt_valid), ("prediction", pred_valid)):
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"{side} labels must lie in [0, {self.num_classes}) or be "
                                 f"{self.ignore_label}, got {labels.min()}..{labels.max()}")
        n = self.num_classes
        self.confusion += np.bincount(n * gt_valid + pred_valid, minlength=n * n).reshape(n, n)

    def merge(self, other: SemanticIoU) -> None:
        """Add ``other``'s confusion matrix (same classes) to this one."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.confusion += other.confusion

    def summarize(self) -> SemanticSummary:
        """IoU per class (rows are ground truth, columns prediction) and their mean, x100."""
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(axis=0) + self.confusion.sum(axis=1) - tp
        present = union > 0
        iou = np.full(self.num_classes, np.nan)
        iou[present] = 100 * tp[present] / union[present]
        miou = float(iou[present].mean()) if present.any() else math.nan
        return SemanticSummary(miou=miou, iou=tuple(float(v) for v in iou))
