"""BiFPN: the node layout behind the checkpoint names, and a BiFPN CondInst (with the semantic
branch) that trains and predicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from orchestrator.models.bifpn import bifpn_nodes
from tests.models.helpers import DEMO_CONFIGS, build, make_cfg, tiny_input


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """The R-18 GN demo CondInst on a narrow 2-layer BiFPN, semantic loss on."""
    cfg = make_cfg("condinst", DEMO_CONFIGS["condinst"], num_classes=4)
    cfg.MODEL.BACKBONE.NAME = "build_fcos_resnet_bifpn_backbone"
    cfg.MODEL.BiFPN.OUT_CHANNELS = 64
    cfg.MODEL.BiFPN.NUM_REPEATS = 2
    cfg.MODEL.BiFPN.NORM = "GN"
    cfg.MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON = True
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0
    return build(cfg)


def test_nodes_fuse_top_down_then_bottom_up() -> None:
    assert bifpn_nodes(5) == [
        (3, (3, 4)), (2, (2, 5)), (1, (1, 6)), (0, (0, 7)),
        (1, (1, 7, 8)), (2, (2, 6, 9)), (3, (3, 5, 10)), (4, (4, 11))]
    assert bifpn_nodes(3) == [(1, (1, 2)), (0, (0, 3)), (1, (1, 3, 4)), (2, (2, 5))]


def test_bifpn_levels_and_parameter_names(model: nn.Module) -> None:
    backbone = model.backbone
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        f"p{i}": (64, 2**i) for i in range(3, 8)}
    assert backbone.size_divisibility == 32
    names = dict(backbone.named_parameters())
    assert "repeated_bifpn.0.lateral_2_f2.weight" in names  # res5 (512) -> 64
    assert "repeated_bifpn.1.lateral_2_f2.weight" not in names  # already 64 wide
    assert "bottom_up.res6.reduction.weight" in names and "bottom_up.res7.reduction" not in names
    with torch.no_grad():
        feats = backbone.eval()(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "p3": (64, 8, 12), "p4": (64, 4, 6), "p5": (64, 2, 3), "p6": (64, 1, 2),
        "p7": (64, 1, 1)}


def test_bifpn_condinst_trains_with_the_semantic_loss_and_predicts(model: nn.Module) -> None:
    model.train()
    losses = model([tiny_input(), tiny_input()])
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask",
                           "loss_sem"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_sem"] > 0
    sum(losses.values()).backward()
    assert model.mask_branch.logits.weight.grad.abs().sum() > 0
    assert model.mask_branch.seg_head[0][0].weight.grad.abs().sum() > 0
    fusion = model.backbone.repeated_bifpn[1].weights_f1_1_7_8
    assert fusion.grad is not None and fusion.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        (out,) = model([tiny_input(out=(96, 90))])
    assert len(out["instances"]) > 0 and out["instances"].pred_masks.shape[1:] == (96, 90)
