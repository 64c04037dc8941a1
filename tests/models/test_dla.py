"""DLA-34 backbone: feature strides/channels, and a DLA BlendMask that trains and predicts."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import CfgNode
from torch import nn

from orchestrator.models.dla import build_dla
from tests.conftest import REPO
from tests.models.helpers import build, make_cfg, tiny_input, train_step_blendmask

DLA_CONFIG = REPO / "configs/blendmask/DLA_34_syncbn_4x.yaml"


def _cfg() -> CfgNode:
    cfg = make_cfg("blendmask", DLA_CONFIG, num_classes=4)
    cfg.MODEL.DLA.NORM = "BN"
    cfg.MODEL.BASIS_MODULE.NORM = "BN"
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0  # untrained: keep every candidate
    # Narrow heads keep the CPU test short; the DLA itself is the published one.
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.FCOS.NUM_CLS_CONVS = cfg.MODEL.FCOS.NUM_BOX_CONVS = 1
    cfg.MODEL.BASIS_MODULE.CONVS_DIM = 32
    cfg.MODEL.BLENDMASK.ATTN_SIZE = 7
    cfg.MODEL.BLENDMASK.BOTTOM_RESOLUTION = 28
    return cfg


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return build(_cfg())


def test_dla34_levels_halve_the_resolution_with_the_reference_widths() -> None:
    dla = build_dla(_cfg()).eval()
    with torch.no_grad():
        feats = dla(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        f"level{i}": (c, 64 >> i, 96 >> i) for i, c in enumerate((16, 32, 64, 128, 256, 512))}
    shapes = dla.output_shape()
    assert [shapes[f"level{i}"].stride for i in range(6)] == [1, 2, 4, 8, 16, 32]


def test_dla_needs_unfrozen_stages() -> None:
    cfg = _cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    with pytest.raises(ValueError, match="FREEZE_AT must be -1"):
        build_dla(cfg)


def test_dla_blendmask_trains_and_predicts(model: nn.Module) -> None:
    assert set(model.backbone.output_shape()) == {"p3", "p4", "p5"}
    train_step_blendmask(model)
    bottom_up = model.backbone.bottom_up
    assert bottom_up.level5.root.conv.weight.grad.abs().sum() > 0
    assert bottom_up.base_layer[0].weight.grad.abs().sum() > 0
    # A nested tree computes its own residual; the parent's projection stays in the graph.
    assert bottom_up.level3.project[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        (out,) = model([tiny_input(out=(96, 90))])
    assert len(out["instances"]) > 0 and out["instances"].pred_masks.shape[1:] == (96, 90)
