"""A generated COCO ground truth with detections on it, shaped to trip a COCO scorer.

Why it exists: ``orchestrator.evaluation.scoring`` must give pycocotools' numbers exactly, and
the cases where two scorers can disagree are the rare ones: crowd regions (ignored, matched
many times), empty images, images without detections, categories without ground truth, tied
scores (sort order), detections of the wrong class and sizes at the small/medium/large limits.
The unit test and ``bench/coco_scoring.py`` both score this set with both scorers.

Masks are random convex polygons rasterised straight to RLE by pycocotools (never dense), so a
COCO-val-sized set (5,000 images, 100 detections each) is made in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["ScoringSet", "scoring_set"]

_VERTICES = 10
# Radii from 3 to 160 px, log-uniform: areas on both sides of COCO's 32^2 and 96^2 limits.
_RADIUS = (3.0, 160.0)


@dataclass(frozen=True)
class ScoringSet:
    """``ground_truth``: a COCO instances dict (polygons; crowds as uncompressed RLE);
    ``records``: detectron2-style prediction records (dataset category ids, ``bbox`` XYWH,
    ``segmentation`` compressed RLE with ``str`` counts, ``score``)."""

    ground_truth: dict[str, Any]
    records: list[dict[str, Any]]


def _polygon(rng: np.random.Generator, cx: float, cy: float, radius: float) -> list[float]:
    angles = np.sort(rng.uniform(0, 2 * np.pi, _VERTICES))
    radii = radius * rng.uniform(0.6, 1.0, _VERTICES)
    return np.round(np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
                    .ravel(), 2).tolist()


def _random_polygon(rng: np.random.Generator, width: int, height: int) -> list[float]:
    radius = float(np.exp(rng.uniform(*np.log(_RADIUS))))
    return _polygon(rng, rng.uniform(0, width), rng.uniform(0, height), radius)


def _uncompressed(rle: dict[str, Any]) -> dict[str, Any]:
    """COCO's crowd format: run lengths as a list, column-major, starting with zeros."""
    flat = mask_util.decode(rle).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": list(rle["size"])}


def _ground_truth(rng: np.random.Generator, image_id: int, size: tuple[int, int],
                  categories: list[int], next_id: int) -> list[dict[str, Any]]:
    height, width = size
    anns = []
    for k in range(int(rng.poisson(7))):
        poly = _random_polygon(rng, width, height)
        rle = mask_util.frPyObjects([poly], height, width)[0]
        crowd = k == 0 and rng.random() < 0.15
        segmentation: Any = _uncompressed(rle) if crowd else [poly]
        anns.append({"id": next_id + k, "image_id": image_id, "iscrowd": int(crowd),
                     "category_id": int(rng.choice(categories)), "segmentation": segmentation,
                     "area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist()})
    return anns


def _detections(rng: np.random.Generator, gts: list[dict[str, Any]], size: tuple[int, int],
                categories: list[int], per_image: int) -> list[tuple[list[float], int]]:
    """Polygons and classes: jittered copies of the ground truth, crowds included (sometimes
    of another class), then random false positives up to ``per_image``."""
    height, width = size
    found = []
    for gt in gts:
        x, y, w, h = gt["bbox"]
        for _ in range(int(rng.integers(1, 4))):
            radius = max(2.0, (w + h) / 4 * rng.uniform(0.8, 1.2))
            poly = _polygon(rng, x + w / 2 + rng.normal(0, w / 8 + 1),
                            y + h / 2 + rng.normal(0, h / 8 + 1), radius)
            cls = gt["category_id"] if rng.random() < 0.85 else int(rng.choice(categories))
            found.append((poly, cls))
    while len(found) < per_image:
        found.append((_random_polygon(rng, width, height), int(rng.choice(categories))))
    return found[:per_image]


def _records(rng: np.random.Generator, image_id: int, size: tuple[int, int],
             found: list[tuple[list[float], int]]) -> list[dict[str, Any]]:
    if not found:
        return []
    rles = mask_util.frPyObjects([poly for poly, _ in found], *size)
    boxes = mask_util.toBbox(rles) + rng.normal(0, 1.0, (len(rles), 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 0.5)
    # Scores on a 0.01 grid: many ties, which scorers must break the same (stable) way.
    scores = np.round(rng.uniform(0, 1, len(rles)), 2)
    return [{"image_id": image_id, "category_id": cls, "bbox": box.tolist(), "score": float(s),
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("utf-8")}}
            for (_, cls), rle, box, s in zip(found, rles, boxes, scores, strict=True)]


def scoring_set(num_images: int, *, detections_per_image: int = 100, num_classes: int = 8,
                size: tuple[int, int] = (480, 640), seed: int = 0) -> ScoringSet:
    """Ground truth and detections on ``num_images`` images of ``size`` (height, width).

    About 5% of images have no ground truth (their detections are all false positives) and
    5% no detections; category ids are non-contiguous, and the last category has detections
    but no ground truth (its AP is NaN).
    """
    rng = np.random.default_rng(seed)
    ids = [2 * k + 1 for k in range(num_classes)]
    gt_categories = ids[:-1]
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png",
                       "height": size[0], "width": size[1]})
        kind = rng.random()
        gts = [] if kind < 0.05 else _ground_truth(rng, image_id, size, gt_categories,
                                                   len(anns) + 1)
        anns.extend(gts)
        if kind < 0.05 or kind > 0.10:
            found = _detections(rng, gts, size, ids, detections_per_image)
            records.extend(_records(rng, image_id, size, found))
    categories = [{"id": i, "name": f"class{i}"} for i in ids]
    return ScoringSet({"images": images, "annotations": anns, "categories": categories},
                      records)
