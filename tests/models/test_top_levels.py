"""FCOS top levels (P6 alone for the 550 models) and a BlendMask with the real-time head: one
conv tower shared by classes and boxes, BatchNorm per level."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import get_cfg

from orchestrator.models.config import add_fcos_config
from orchestrator.models.top_levels import LastLevelP6, fcos_top_block
from tests.models.helpers import DEMO_CONFIGS, build, make_cfg, tiny_input


def test_top_levels_select_p6_p7_p6_or_nothing() -> None:
    cfg = get_cfg()
    add_fcos_config(cfg)
    assert fcos_top_block(cfg, 8).num_levels == 2  # type: ignore[union-attr]
    cfg.MODEL.FCOS.TOP_LEVELS = 1
    block = fcos_top_block(cfg, 8)
    assert isinstance(block, LastLevelP6) and block.in_feature == "p5"
    (p6,) = block(torch.randn(1, 8, 5, 7))
    assert p6.shape == (1, 8, 3, 4)
    cfg.MODEL.FCOS.TOP_LEVELS = 0
    assert fcos_top_block(cfg, 8) is None
    cfg.MODEL.FCOS.TOP_LEVELS = 3
    with pytest.raises(ValueError, match="TOP_LEVELS"):
        fcos_top_block(cfg, 8)


def test_blendmask_with_p6_and_a_shared_bn_tower_trains_and_predicts() -> None:
    cfg = make_cfg("blendmask", DEMO_CONFIGS["blendmask"], num_classes=4)
    fcos = cfg.MODEL.FCOS
    fcos.TOP_LEVELS, fcos.FPN_STRIDES = 1, [8, 16, 32, 64]
    fcos.IN_FEATURES = ["p3", "p4", "p5", "p6"]
    fcos.SIZES_OF_INTEREST = [32, 64, 128]
    fcos.NUM_SHARE_CONVS, fcos.NUM_CLS_CONVS, fcos.NUM_BOX_CONVS = 2, 0, 0
    fcos.NORM = "BN"
    fcos.INFERENCE_TH_TEST = 0.0
    model = build(cfg)
    names = set(model.state_dict())
    assert "backbone.top_block.p6.weight" in names and "backbone.top_block.p7.weight" not in names
    assert "proposal_generator.fcos_head.share_tower.1.3.running_var" in names  # 4 levels
    model.train()
    losses = model([tiny_input(with_sem=True), tiny_input(with_sem=True)])
    assert len(losses) == 5 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    tower = model.proposal_generator.fcos_head.share_tower
    assert tower[0].weight.grad.abs().sum() > 0
    assert tower[1][3].num_batches_tracked.item() == 1  # P6 went through its own norm
    model.eval()
    with torch.no_grad():
        (out,) = model([tiny_input(out=(96, 90))])
    assert len(out["instances"]) > 0
