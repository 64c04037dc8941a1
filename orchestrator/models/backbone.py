"""Backbones: detectron2's ResNet with deformable blocks that run without compiled ops, and the
FCOS backbone (ResNet + FPN over res3-res5, with P6/P7 computed from P5).

Unlike RetinaNet's ``build_retinanet_resnet_fpn_backbone`` (P6 from C5), the reference
BlendMask/CondInst checkpoints compute P6 from the FPN *output* P5, so the top block reads "p5".
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet
from torch import nn

from orchestrator.models.deform import DeformBasicBlock, DeformBottleneckBlock
from orchestrator.models.top_levels import fcos_top_block

__all__ = ["build_deformable_resnet_backbone", "build_fcos_resnet_fpn_backbone",
           "deformable_blocks"]

BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3],
                    152: [3, 8, 36, 3]}


def deformable_blocks(cfg: CfgNode, interval: int | None = None) -> list[list[bool]]:
    """Per stage (res2-res5), per block: is it deformable?

    In a stage flagged in ``DEFORM_ON_PER_STAGE``, block i is deformable when i is a multiple
    of ``DEFORM_INTERVAL`` (1 = every block, detectron2's behaviour); ``interval`` overrides
    the config (the reference's BiFPN backbone ignores it, i.e. uses 1).
    """
    res = cfg.MODEL.RESNETS
    if interval is None:
        interval = res.get("DEFORM_INTERVAL", 1)
    if not isinstance(interval, int) or interval < 1:
        raise ValueError(f"MODEL.RESNETS.DEFORM_INTERVAL must be an integer >= 1, got {interval}")
    if res.DEPTH not in BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(BLOCKS_PER_STAGE)}, "
                         f"got {res.DEPTH}")
    flags = list(res.DEFORM_ON_PER_STAGE)
    if len(flags) != 4:
        raise ValueError("MODEL.RESNETS.DEFORM_ON_PER_STAGE needs 4 entries (res2-res5), "
                         f"got {flags}")
    return [[bool(on) and i % interval == 0 for i in range(n)]
            for on, n in zip(flags, BLOCKS_PER_STAGE[res.DEPTH], strict=True)]


def _stage_blocks(cfg: CfgNode, stage: int, deform: list[bool], in_channels: int,
                  out_channels: int, bottleneck_channels: int) -> list[CNNBlockBase]:
    """The blocks of res{stage}: detectron2's, with the flagged ones deformable."""
    res = cfg.MODEL.RESNETS
    dilation = res.RES5_DILATION if stage == 5 else 1
    first_stride = 1 if stage == 2 or (stage == 5 and dilation == 2) else 2
    deform_kwargs = {"deform_modulated": res.DEFORM_MODULATED,
                     "deform_num_groups": res.DEFORM_NUM_GROUPS}
    blocks: list[CNNBlockBase] = []
    for i, deformable in enumerate(deform):
        kwargs = {"stride": first_stride if i == 0 else 1, "norm": res.NORM}
        block: CNNBlockBase
        if res.DEPTH in (18, 34):
            block = (DeformBasicBlock(in_channels, out_channels, **kwargs, **deform_kwargs)
                     if deformable else BasicBlock(in_channels, out_channels, **kwargs))
        else:
            kwargs.update(bottleneck_channels=bottleneck_channels,
                          stride_in_1x1=res.STRIDE_IN_1X1, dilation=dilation,
                          num_groups=res.NUM_GROUPS)
            block = (DeformBottleneckBlock(in_channels, out_channels, **kwargs, **deform_kwargs)
                     if deformable else BottleneckBlock(in_channels, out_channels, **kwargs))
        blocks.append(block)
        in_channels = out_channels
    return blocks


@BACKBONE_REGISTRY.register()
def build_deformable_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec,
                                     interval: int | None = None) -> ResNet:
    """detectron2's ``build_resnet_backbone`` (same modules, names and init order), with
    deformable blocks backed by torchvision, ``MODEL.RESNETS.DEFORM_INTERVAL``, and deformable
    R-18/R-34 basic blocks (an extension: detectron2 refuses those)."""
    res = cfg.MODEL.RESNETS
    if res.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {res.RES5_DILATION}")
    if res.DEPTH in (18, 34) and (res.RES2_OUT_CHANNELS != 64 or res.RES5_DILATION != 1
                                  or res.NUM_GROUPS != 1):
        raise ValueError("R-18/R-34 need MODEL.RESNETS.RES2_OUT_CHANNELS 64, RES5_DILATION 1 "
                         "and NUM_GROUPS 1")
    deform = deformable_blocks(cfg, interval)
    stem = BasicStem(in_channels=input_shape.channels, out_channels=res.STEM_OUT_CHANNELS,
                     norm=res.NORM)
    in_channels, out_channels = res.STEM_OUT_CHANNELS, res.RES2_OUT_CHANNELS
    bottleneck_channels = res.NUM_GROUPS * res.WIDTH_PER_GROUP
    stages = []
    for stage, stage_deform in zip(range(2, 6), deform, strict=True):
        stages.append(_stage_blocks(cfg, stage, stage_deform, in_channels, out_channels,
                                    bottleneck_channels))
        in_channels, out_channels = out_channels, out_channels * 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=res.OUT_FEATURES,
                  freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


def _top_block(cfg: CfgNode, out_channels: int) -> nn.Module | None:
    return fcos_top_block(cfg, out_channels)


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """ResNet (deformable blocks as configured) + FPN (p3-p5) + P6/P7, the backbone of the
    reference FCOS-based models."""
    bottom_up = build_deformable_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=_top_block(cfg, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
