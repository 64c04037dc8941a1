"""The FCOS backbone: detectron2's ResNet + FPN over res3-res5, with P6/P7 computed from P5.

Unlike RetinaNet's ``build_retinanet_resnet_fpn_backbone`` (P6 from C5), the reference
BlendMask/CondInst checkpoints compute P6 from the FPN *output* P5, so the top block reads "p5".
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone, build_resnet_backbone
from torch import nn

from orchestrator.models.top_levels import fcos_top_block

__all__ = ["build_fcos_resnet_fpn_backbone"]


def _top_block(cfg: CfgNode, out_channels: int) -> nn.Module | None:
    return fcos_top_block(cfg, out_channels)


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """ResNet + FPN (p3-p5) + P6/P7, the backbone of the reference FCOS-based models."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=_top_block(cfg, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
