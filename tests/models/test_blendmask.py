"""BlendMask pieces: basis_sem painting, the blender, training losses and inference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from orchestrator.models.arch import get_arch
from orchestrator.models.blendmask import BlendMask
from orchestrator.models.mapper import DatasetMapperWithBasis, paint_basis_sem
from tests.models.helpers import DEMO_CONFIGS, build, make_cfg, tiny_input, train_step_blendmask


@pytest.fixture(scope="module")
def model() -> nn.Module:
    cfg = make_cfg("blendmask", DEMO_CONFIGS["blendmask"], num_classes=4)
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0  # untrained: keep every candidate
    return build(cfg)


def _square(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def test_basis_sem_is_painted_in_annotation_order_crowd_included() -> None:
    anns: list[dict[str, Any]] = [
        {"category_id": 0, "segmentation": _square(0, 0, 6, 6)},
        {"category_id": 2, "segmentation": _square(3, 3, 8, 8), "iscrowd": 1},
        {"category_id": 1, "bbox": [0, 0, 1, 1]},  # no mask: nothing painted
    ]
    sem = paint_basis_sem(anns, 10, 10)
    assert sem.dtype == np.uint8
    assert sem[1, 1] == 1 and sem[4, 4] == 3 and sem[7, 7] == 3 and sem[9, 9] == 0
    rle = {"size": [10, 10], "counts": [0, 100]}  # uncompressed RLE: everything
    assert (paint_basis_sem([{"category_id": 1, "segmentation": rle}], 10, 10) == 2).all()


def test_mapper_resizes_basis_sem_with_the_image(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    cfg = make_cfg("blendmask", DEMO_CONFIGS["blendmask"])
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    mapper = get_arch("blendmask").train_mapper
    assert mapper is DatasetMapperWithBasis
    record = {"file_name": str(tmp_path / "a.png"), "height": 20, "width": 40, "image_id": 0,
              "annotations": [{"category_id": 1, "bbox": [0, 0, 10, 10], "bbox_mode": 0,
                               "segmentation": _square(0, 0, 10, 10), "iscrowd": 0}]}
    out = DatasetMapperWithBasis(cfg, is_train=True)(json.loads(json.dumps(record)))
    assert out["image"].shape == (3, 40, 80) and out["basis_sem"].shape == (40, 80)
    assert out["basis_sem"].dtype == torch.int64
    assert out["basis_sem"][5, 5] == 2 and out["basis_sem"][30, 60] == 0
    assert len(out["instances"]) == 1


def test_blender_softmaxes_attention_over_bases(model: BlendMask) -> None:
    blender = model.blender
    rois = torch.zeros(1, blender.num_bases, 28, 28)
    rois[:, 0] = 2.0
    attns = torch.zeros(1, blender.num_bases * blender.attn_size**2)  # uniform: 1/K each
    assert torch.allclose(blender.blend(rois, attns), torch.full((1, 28, 28), 2.0 / 4))


def test_training_returns_the_five_losses(model: BlendMask) -> None:
    train_step_blendmask(model)
    assert model.top_layer.weight.grad is not None


def test_inference_returns_instances_at_the_requested_size(model: BlendMask) -> None:
    model.eval()
    with torch.no_grad():
        (out,) = model([tiny_input(out=(96, 90))])
    inst = out["instances"]
    assert inst.image_size == (96, 90) and len(inst) > 0
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape[1:] == (96, 90)


def test_semantic_head_uses_plain_batchnorm_whatever_the_basis_norm(model: BlendMask) -> None:
    """The reference's seg_head is conv/BatchNorm2d/ReLU x 2 even when BASIS_MODULE.NORM is
    GN (as in the demo) or SyncBN (the published configs)."""
    basis = model.basis_module
    assert type(basis.refine[0][1]) is nn.GroupNorm  # the demo's BASIS_MODULE.NORM
    assert basis.seg_head is not None
    assert [type(basis.seg_head[i]) for i in (1, 4)] == [nn.BatchNorm2d, nn.BatchNorm2d]
    names = {k for k in basis.state_dict() if k.startswith("seg_head.1.")}
    assert names == {f"seg_head.1.{k}" for k in ("weight", "bias", "running_mean",
                                                  "running_var", "num_batches_tracked")}
