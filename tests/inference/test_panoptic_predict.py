"""Predict's panoptic path from contract-conforming model outputs (section 3): stuff drawn
under the instances, a COCO panoptic export that our check and detectron2's reader accept.

The end-to-end ``orchestrator predict`` of a trained panoptic run belongs with the panoptic
model (its tests train the tiny run); here the lowest function that takes model outputs runs
with real files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from PIL import Image

from orchestrator.data.panoptic import check_panoptic, read_panoptic_png
from orchestrator.inference.panoptic import (
    PANOPTIC_DIR,
    PANOPTIC_FILE,
    PanopticExport,
    num_thing_classes,
    stuff_label,
)
from orchestrator.inference.predict import write_prediction

H, W = 40, 60
CLASSES = ("person", "car")
STUFF = ("sky",)  # the run recorded one stuff name; label 2 falls back to "stuff 2"


def _cfg() -> Any:
    cfg = get_cfg()  # GeneralizedRCNN: T is MODEL.ROI_HEADS.NUM_CLASSES
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(CLASSES)
    return cfg


def _output(car_label: int = 1) -> dict[str, Any]:
    """Sky (stuff 1) on the top half, road (stuff 2) below, a car (thing 1) in the middle."""
    ids = np.ones((H, W), dtype=np.int32)
    ids[H // 2:] = 2
    ids[10:30, 20:50] = 3
    car = torch.zeros((1, H, W), dtype=torch.bool)
    car[0, 10:30, 20:50] = True
    instances = Instances((H, W), pred_boxes=Boxes(torch.tensor([[20.0, 10.0, 50.0, 30.0]])),
                          scores=torch.tensor([0.9]), pred_classes=torch.tensor([car_label]),
                          pred_masks=car)
    segments = [{"id": 1, "isthing": False, "category_id": 1, "area": 20 * W - 300},
                {"id": 2, "isthing": False, "category_id": 2, "area": 20 * W - 300},
                {"id": 3, "isthing": True, "category_id": car_label, "area": 600,
                 "score": 0.9}]
    return {"instances": instances, "panoptic_seg": (torch.from_numpy(ids), segments),
            "sem_seg_labels": torch.from_numpy(np.where(ids == 3, 0, ids).astype(np.uint8))}


def _predict(tmp_path: Path, outputs: list[dict[str, Any]]) -> tuple[Path, PanopticExport]:
    """``write_prediction`` for each output as ``predict`` runs it, inputs saved as .jpg
    (detectron2's panoptic reader derives image names that way)."""
    out, inputs = tmp_path / "out", tmp_path / "in"
    out.mkdir()
    inputs.mkdir()
    export = PanopticExport(out, num_thing_classes(_cfg(), CLASSES), CLASSES, STUFF)
    images = []
    for image_id, output in enumerate(outputs, 1):
        rgb = np.full((H, W, 3), 128, dtype=np.uint8)
        Image.fromarray(rgb).save(inputs / f"img{image_id}.jpg")
        write_prediction(rgb, output, out / f"img{image_id}.png", image_id=image_id,
                         cfg=_cfg(), class_names=CLASSES, stuff_names=STUFF, export=export)
        images.append({"id": image_id, "file_name": str(inputs / f"img{image_id}.jpg"),
                       "height": H, "width": W})
    export.write(images, {"run_id": "r"})
    return out, export


def test_export_passes_our_check_and_detectron2s_reader(tmp_path: Path) -> None:
    from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

    out, _ = _predict(tmp_path, [_output(), _output(car_label=0)])
    json_file, pngs = out / PANOPTIC_FILE, out / PANOPTIC_DIR
    assert check_panoptic(json_file, pngs) == []
    document = json.loads(json_file.read_text(encoding="utf-8"))
    # Things keep their class index (as predictions.json); stuff label l -> T + l - 1 = 1 + l.
    assert document["categories"] == [
        {"id": 0, "name": "person", "isthing": 1}, {"id": 1, "name": "car", "isthing": 1},
        {"id": 2, "name": "sky", "isthing": 0}, {"id": 3, "name": "stuff 2", "isthing": 0}]
    first = document["annotations"][0]
    assert first["file_name"] == "img1.png" and first["image_id"] == 1
    assert first["segments_info"] == [
        {"id": 1, "category_id": 2, "iscrowd": 0, "area": 20 * W - 300, "bbox": [0, 0, W, 20]},
        {"id": 2, "category_id": 3, "iscrowd": 0, "area": 20 * W - 300,
         "bbox": [0, 20, W, 20]},
        {"id": 3, "category_id": 1, "iscrowd": 0, "area": 600, "bbox": [20, 10, 30, 20]}]
    np.testing.assert_array_equal(read_panoptic_png(pngs / "img1.png"),
                                  _output()["panoptic_seg"][0].numpy())
    meta = {"thing_dataset_id_to_contiguous_id": {0: 0, 1: 1},
            "stuff_dataset_id_to_contiguous_id": {2: 1, 3: 2}}
    loaded = load_coco_panoptic_json(str(json_file), str(tmp_path / "in"), str(pngs), meta)
    assert [(s["category_id"], s["isthing"]) for s in loaded[1]["segments_info"]] == \
        [(1, False), (2, False), (0, True)]
    assert not list(out.rglob("*.tmp"))


def test_stuff_is_drawn_under_the_instances(tmp_path: Path) -> None:
    out, _ = _predict(tmp_path, [_output()])
    drawn = np.asarray(Image.open(out / "img1.png").convert("RGB")).astype(int)
    gray = np.full((H, W, 3), 128)
    changed = (drawn != gray).any(axis=2)
    assert changed[:8, :15].mean() > 0.9 and changed[-8:, :15].mean() > 0.9  # sky, stuff 2
    sky, road = drawn[2, 2], drawn[-2, 2]
    assert (sky != road).any()  # one colour per stuff class
    plain = Path(tmp_path / "plain.png")
    output = {k: v for k, v in _output().items() if k != "panoptic_seg"}
    write_prediction(np.full((H, W, 3), 128, np.uint8), output, plain, image_id=1, cfg=_cfg(),
                     class_names=CLASSES)
    alone = np.asarray(Image.open(plain).convert("RGB")).astype(int)
    assert (alone[:8, :15] == 128).all()  # without panoptic_seg the background stays as is
    assert (alone[15:25, 25:45] != 128).any(axis=2).mean() > 0.9  # the car is drawn either way


def test_no_panoptic_output_no_panoptic_export(tmp_path: Path) -> None:
    output = {k: v for k, v in _output().items() if k != "panoptic_seg"}
    out, export = _predict(tmp_path, [output])
    assert export.annotations == []
    assert not (out / PANOPTIC_FILE).exists() and not (out / PANOPTIC_DIR).exists()


def test_stuff_names_fall_back_and_thing_count_follows_the_model() -> None:
    assert stuff_label(1, ["sky"]) == "sky" and stuff_label(2, ["sky"]) == "stuff 2"
    cfg = _cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    assert num_thing_classes(cfg, CLASSES) == 5  # the model's indices, not the names
    cfg.MODEL.META_ARCHITECTURE = "SomethingUnknown"
    assert num_thing_classes(cfg, CLASSES) == 2


@pytest.mark.parametrize("bad", [{"id": 9, "isthing": False, "category_id": 1, "area": 1}])
def test_an_id_missing_from_segments_info_is_an_error(tmp_path: Path,
                                                      bad: dict[str, Any]) -> None:
    output = _output()
    ids, segments = output["panoptic_seg"]
    output["panoptic_seg"] = (ids, [s for s in segments if s["id"] != 3] + [bad])
    with pytest.raises(ValueError, match=r"ids \[3\] are in the panoptic map"):
        _predict(tmp_path, [output])
