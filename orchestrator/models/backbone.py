"""The FCOS backbone: detectron2's ResNet + FPN over res3-res5, with P6/P7 computed from P5.

Unlike RetinaNet's ``build_retinanet_resnet_fpn_backbone`` (P6 from C5), the reference
BlendMask/CondInst checkpoints compute P6 from the FPN *output* P5, so the top block reads "p5".
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from torch import nn

__all__ = ["build_fcos_resnet_fpn_backbone"]


def _top_block(cfg: CfgNode, out_channels: int) -> nn.Module | None:
    levels = cfg.MODEL.FCOS.TOP_LEVELS
    if levels == 2:
        return LastLevelP6P7(out_channels, out_channels, in_feature="p5")
    if levels == 1:
        return LastLevelMaxPool()
    if levels == 0:
        return None
    raise ValueError(f"MODEL.FCOS.TOP_LEVELS must be 0, 1 or 2, got {levels}")


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
