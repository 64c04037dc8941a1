"""Drawing records: labels, sizes, and the fallback class names."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util

from orchestrator.inference.draw import draw_records, label_for


def _record(score: float, category: int = 1) -> dict[str, object]:
    mask = np.zeros((40, 60), dtype=np.uint8, order="F")
    mask[10:30, 20:50] = 1
    rle = mask_util.encode(mask)
    rle["counts"] = rle["counts"].decode()
    return {"bbox": [20.0, 10.0, 30.0, 20.0], "score": score, "category_id": category,
            "segmentation": rle}


def test_label_names_the_class_or_falls_back_to_its_index() -> None:
    assert label_for(1, 0.874, ["circle", "square"]) == "square 87%"
    assert label_for(3, 0.5, ["circle"]) == "class 3 50%"
    assert label_for(0, 0.5, []) == "class 0 50%"


def test_drawing_keeps_the_size_and_paints_the_mask() -> None:
    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    drawn = draw_records(image, [_record(0.9)], ["a", "b"])
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (drawn != image).any(axis=2)[12:28, 22:48].mean() > 0.5


def test_records_below_min_score_are_not_drawn() -> None:
    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    assert (draw_records(image, [_record(0.2)], ["a", "b"], min_score=0.5) == image).all()
