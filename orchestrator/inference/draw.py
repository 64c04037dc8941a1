"""Draw COCO result records on an image with detectron2's ``Visualizer``.

Records (RLE masks, XYWH boxes) are the one format both ``predict`` and the training hook
produce, so drawing from them shows exactly what is exported. A panoptic model's stuff
regions are drawn underneath (``orchestrator.inference.panoptic``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from detectron2.utils.visualizer import ColorMode, Visualizer

from orchestrator.inference.panoptic import PanopticOutput, draw_stuff

__all__ = ["draw_records", "label_for"]


def label_for(category: int, score: float, class_names: Sequence[str]) -> str:
    """``"circle 87%"``; ``"class N"`` when the run did not record its class names."""
    name = class_names[category] if 0 <= category < len(class_names) else f"class {category}"
    return f"{name} {score:.0%}"


def _boxes_xyxy(records: Sequence[dict[str, Any]]) -> np.ndarray:
    boxes = np.array([r["bbox"] for r in records], dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def draw_records(rgb: np.ndarray, records: Sequence[dict[str, Any]],
                 class_names: Sequence[str], *, min_score: float = 0.0,
                 panoptic: PanopticOutput | None = None,
                 stuff_names: Sequence[str] = ()) -> np.ndarray:
    """``rgb`` (``H x W x 3`` uint8) with the masks, boxes, class names and scores of the
    records scoring at least ``min_score`` drawn on it; same size as the input. The stuff
    regions of ``panoptic`` (named from ``stuff_names``) go underneath."""
    shown = sorted((r for r in records if r["score"] >= min_score), key=lambda r: -r["score"])
    visualizer = Visualizer(rgb, metadata=None, scale=1.0, instance_mode=ColorMode.IMAGE)
    if panoptic is not None:
        draw_stuff(visualizer, panoptic, stuff_names)
    if not shown:
        return np.array(visualizer.output.get_image())
    masks = [mask_util.decode(r["segmentation"]).astype(bool) for r in shown
             if "segmentation" in r]
    drawn = visualizer.overlay_instances(
        boxes=_boxes_xyxy(shown), masks=masks or None,
        labels=[label_for(int(r["category_id"]), float(r["score"]), class_names)
                for r in shown])
    return np.array(drawn.get_image())
