"""Tiny models and inputs shared by the model tests."""

from __future__ import annotations

from typing import Any

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from torch import nn

from orchestrator.models.arch import get_arch
from tests.conftest import REPO

DEMO_CONFIGS = {
    "condinst": REPO / "configs/condinst/condinst_R_18_demo.yaml",
    "blendmask": REPO / "configs/blendmask/blendmask_R_18_demo.yaml",
}


def make_cfg(arch: str, config: str | Any, **overrides: Any) -> CfgNode:
    cfg = get_cfg()
    support = get_arch(arch)
    assert support.add_config is not None
    support.add_config(cfg)
    cfg.merge_from_file(str(config))
    for key in support.num_classes_keys:
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = overrides.get("num_classes", node[leaf])
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def build(cfg: CfgNode) -> nn.Module:
    torch.manual_seed(0)
    return build_model(cfg)


def tiny_input(size: tuple[int, int] = (64, 56), out: tuple[int, int] = (128, 112),
               with_sem: bool = False) -> dict[str, Any]:
    """One image with two polygon instances, in detectron2's model input format."""
    h, w = size
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor([[4.0, 4.0, 30.0, 36.0], [24.0, 20.0, 54.0, 60.0]]))
    inst.gt_classes = torch.tensor([1, 3])
    inst.gt_masks = PolygonMasks([[[4, 4, 30, 4, 30, 36, 4, 36.0]],
                                  [[24, 20, 54, 20, 40, 60.0]]])
    image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
    data: dict[str, Any] = {"image": image, "instances": inst, "height": out[0], "width": out[1]}
    if with_sem:
        data["basis_sem"] = torch.zeros((h, w), dtype=torch.int64)
    return data


BLENDMASK_LOSSES = {"loss_basis_sem", "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr",
                    "loss_mask"}


def train_step_blendmask(model: nn.Module) -> dict[str, torch.Tensor]:
    """One training forward on two tiny images and a backward; checks BlendMask's five losses
    are there and finite. Returns them (the gradients are on the model)."""
    model.train()
    losses = model([tiny_input(with_sem=True), tiny_input(with_sem=True)])
    assert set(losses) == BLENDMASK_LOSSES
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    return dict(losses)
