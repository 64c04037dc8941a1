"""ChunkedCOCOEvaluator gives detectron2's COCOEvaluator numbers for every mask convention."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import paste_masks_in_image
from detectron2.structures import Boxes, Instances, ROIMasks
from torch.nn import functional as F
from torchvision.ops import roi_align

from orchestrator.data import synth
from orchestrator.evaluation import (
    DEFAULT_CHUNK_BYTES,
    ChunkedCOCOEvaluator,
    EvalProgress,
    GlobalMasks,
    aligned_bilinear,
)
from orchestrator.evaluation import postprocess as postprocess_module
from orchestrator.training.trainer import Trainer
from tests.evaluation.coco_compare import assert_same_printed

NAME = "evaluation_test_shapes"
STRIDE, INPUT = 4, (50, 50)  # global masks: a 50x50 input padded to 52x52, 13x13 masks


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    data = synth.generate(tmp_path_factory.mktemp("eval") / "shapes", num_images=6, size=64,
                          seed=0)
    if NAME not in DatasetCatalog.list():
        register_coco_instances(NAME, {}, str(data.train.json_file), str(data.train.image_root))
    return DatasetCatalog.get(NAME)


def _gt_masks(record: dict[str, Any]) -> torch.Tensor:
    h, w = record["height"], record["width"]
    rles = [mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))
            for a in record["annotations"]]
    return torch.from_numpy(mask_util.decode(rles)).permute(2, 0, 1).float()


def _noisy_predictions(record: dict[str, Any], g: torch.Generator) -> dict[str, torch.Tensor]:
    """GT boxes, classes and soft masks with noise, plus one false positive."""
    masks = _gt_masks(record)
    boxes = torch.tensor([a["bbox"] for a in record["annotations"]], dtype=torch.float32)
    boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
    classes = torch.tensor([a["category_id"] for a in record["annotations"]])
    masks = torch.cat([masks, torch.roll(masks[:1], shifts=(9, 7), dims=(1, 2))])
    boxes = torch.cat([boxes, boxes[:1] + torch.tensor([7.0, 9.0, 7.0, 9.0])]).clamp(0, 64)
    classes = torch.cat([classes, (classes[:1] + 1) % len(synth.CLASSES)])
    boxes = (boxes + torch.randn(boxes.shape, generator=g)).clamp(0, 64)
    probs = (masks * 0.8 + 0.2 * torch.rand(masks.shape, generator=g)).clamp(0, 1)
    return {"boxes": boxes, "classes": classes, "probs": probs,
            "scores": torch.rand(len(boxes), generator=g)}


def _instances(pred: dict[str, torch.Tensor], **masks: Any) -> Instances:
    return Instances((64, 64), pred_boxes=Boxes(pred["boxes"]), scores=pred["scores"],
                     pred_classes=pred["classes"], **masks)


def _dense(pred: dict[str, torch.Tensor]) -> tuple[Instances, Instances]:
    masks = pred["probs"] > 0.5
    return _instances(pred, pred_masks=masks), _instances(pred, pred_masks=masks)


def _roi(pred: dict[str, torch.Tensor]) -> tuple[Instances, Instances]:
    rois = torch.cat([torch.arange(len(pred["boxes"]))[:, None].float(), pred["boxes"]], 1)
    roi = roi_align(pred["probs"][:, None], rois, (28, 28), aligned=True)[:, 0]
    pasted = paste_masks_in_image(roi, pred["boxes"], (64, 64))
    return _instances(pred, pred_masks=pasted), _instances(pred, pred_masks=ROIMasks(roi))


def _global(pred: dict[str, torch.Tensor]) -> tuple[Instances, Instances]:
    resized = F.interpolate(pred["probs"][:, None], size=INPUT, mode="bilinear")
    low = F.interpolate(F.pad(resized, (0, 2, 0, 2)), size=(13, 13), mode="area")[:, 0]
    full = aligned_bilinear(low[:, None], STRIDE)[:, :, : INPUT[0], : INPUT[1]]
    full = F.interpolate(full, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    naive = (full > 0.5).float()  # CondInst's reference output: float 0/1
    return (_instances(pred, pred_masks=naive),
            _instances(pred, pred_global_masks=GlobalMasks(low, stride=STRIDE,
                                                           input_size=INPUT)))


@pytest.mark.parametrize("convention", [_dense, _roi, _global], ids=["dense", "roi", "global"])
def test_same_metrics_as_detectron2(dataset: list[dict[str, Any]], convention: Any,
                                    tmp_path: Path) -> None:
    stock = COCOEvaluator(NAME, output_dir=str(tmp_path / "stock"), use_fast_impl=False)
    ours = ChunkedCOCOEvaluator(NAME, output_dir=str(tmp_path / "ours"), chunk_bytes=1)
    g = torch.Generator().manual_seed(0)
    for evaluator in (stock, ours):
        evaluator.reset()
    for record in dataset:
        reference, deferred = convention(_noisy_predictions(record, g))
        inputs = [{"image_id": record["image_id"]}]
        stock.process(inputs, [{"instances": reference}])
        ours.process(inputs, [{"instances": deferred}])
    expected, got = stock.evaluate(), ours.evaluate()
    assert_same_printed(got, expected)
    assert {"bbox", "segm"} <= set(got) and got["segm"]["AP"] > 30
    # The same records (dataset category ids, RLE masks) as detectron2 writes.
    records = [json.loads((tmp_path / side / "coco_instances_results.json").read_text())
               for side in ("stock", "ours")]
    assert records[1] == records[0] and all("segmentation" in r for r in records[1])


def test_oom_is_logged_once_per_evaluation(dataset: list[dict[str, Any]],
                                           monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    real = postprocess_module._resize_chunk

    calls = itertools.count()

    def oom_on_device(masks: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if next(calls) % 3 != 2:  # the first try and the retry fail, the CPU run works
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(masks, **kwargs)

    monkeypatch.setattr(postprocess_module, "_resize_chunk", oom_on_device)
    evaluator = ChunkedCOCOEvaluator(NAME, chunk_bytes=1)
    g = torch.Generator().manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="orchestrator.evaluation.oom"):
        for _ in range(2):  # two evaluations
            evaluator.reset()
            for record in dataset[:2]:
                _, deferred = _global(_noisy_predictions(record, g))
                evaluator.process([{"image_id": record["image_id"]}],
                                  [{"instances": deferred}])
    assert len([r for r in caplog.records if "out of memory" in r.getMessage()]) == 2


def test_trainer_builds_it_from_the_cfg(dataset: list[dict[str, Any]], tmp_path: Path) -> None:
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.ORCHESTRATOR = CfgNode({"EVAL_CHUNK_BYTES": 12345, "EVAL_CPU_FALLBACK": False})
    evaluator = Trainer.build_evaluator(cfg, NAME)
    assert isinstance(evaluator, ChunkedCOCOEvaluator)  # pycocotools: no compiled evaluator
    assert evaluator._chunk_bytes == 12345 and evaluator._cpu_fallback is False
    cfg.pop("ORCHESTRATOR")  # a cfg not made by build_cfg gets the defaults
    assert Trainer.build_evaluator(cfg, NAME)._chunk_bytes == DEFAULT_CHUNK_BYTES


def test_progress_counts_the_images_and_a_class_beyond_the_dataset_is_named(
        dataset: list[dict[str, Any]]) -> None:
    statuses: list[dict[str, Any]] = []
    evaluator = ChunkedCOCOEvaluator(NAME, progress=EvalProgress(statuses.append, every_s=0))
    evaluator.reset()
    beyond = Instances((64, 64), pred_boxes=Boxes(torch.tensor([[1.0, 1.0, 20.0, 20.0]])),
                       scores=torch.tensor([0.9]),
                       pred_classes=torch.tensor([len(synth.CLASSES)]))
    evaluator.process([{"image_id": dataset[0]["image_id"]}], [{"instances": beyond}])
    assert [(s["phase"], s["done"], s["total"]) for s in statuses] == [
        ("inference", 0, len(dataset)), ("inference", 1, len(dataset))]
    assert statuses[-1]["eta_s"] is not None
    with pytest.raises(ValueError, match=r"class 4, but .* has 4 classes .* NUM_CLASSES"):
        evaluator.evaluate()
