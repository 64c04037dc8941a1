"""FCOS as a detectron2 proposal generator: the shared head plus targets, losses and inference.

BlendMask and CondInst pass their instance branch (``top_layer`` / ``controller``) as
``top_module``: it runs on the box-tower output of every level, so each location (positive in
training, detection at test time) carries its own attention or dynamic-filter vector.
"""

from __future__ import annotations

from typing import Any

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from orchestrator.models.fcos_outputs import (
    FCOSInferenceConfig,
    FCOSLossConfig,
    FCOSTrainResult,
    fcos_inference,
    fcos_losses,
    prior_bias,
)
from orchestrator.models.layers import Scale, compute_locations, normal_init

__all__ = ["FCOS", "FCOSHead"]

HeadOutputs = tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor] | None]


class LevelNorms(nn.ModuleList):
    """One BatchNorm per FPN level ("BN"/"SyncBN" head norms): conv weights are shared across
    levels, their statistics are not. Keys ``<i>.<level>.*``."""

    def forward(self, x: Tensor, level: int) -> Tensor:
        return self[level](x)


class Tower(nn.Sequential):
    """[3x3 conv (bias) -> norm -> ReLU] x n; conv keys at 0, 3, 6, 9. Runs per level, so
    per-level norms pick their level's statistics."""

    def forward(self, x: Tensor, level: int = 0) -> Tensor:
        for layer in self:
            x = layer(x, level) if isinstance(layer, LevelNorms) else layer(x)
        return x


def _tower(num_convs: int, channels: int, norm: str, num_levels: int = 1) -> Tower:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=True))
        if norm == "GN":
            layers.append(nn.GroupNorm(32, channels))
        elif norm in ("BN", "SyncBN"):
            layers.append(LevelNorms([get_norm(norm, channels) for _ in range(num_levels)]))
        elif norm:
            raise ValueError("MODEL.FCOS.NORM: only 'GN', 'BN', 'SyncBN' or '' are supported, "
                             f"got {norm!r}")
        layers.append(nn.ReLU())
    return Tower(*layers)


class FCOSHead(nn.Module):
    """Classification and box towers shared by all levels; centerness sits on the box tower."""

    @configurable
    def __init__(self, *, in_channels: int, num_classes: int, num_levels: int,
                 num_cls_convs: int = 4, num_box_convs: int = 4, num_share_convs: int = 0,
                 norm: str = "GN", prior_prob: float = 0.01, use_scale: bool = True) -> None:
        super().__init__()
        self.share_tower = _tower(num_share_convs, in_channels, norm, num_levels)
        self.cls_tower = _tower(num_cls_convs, in_channels, norm, num_levels)
        self.bbox_tower = _tower(num_box_convs, in_channels, norm, num_levels)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = (nn.ModuleList([Scale(1.0) for _ in range(num_levels)])
                       if use_scale else None)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                normal_init(module, std=0.01)
        nn.init.constant_(self.cls_logits.bias, prior_bias(prior_prob))  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: list[ShapeSpec]) -> dict[str, Any]:
        fcos = cfg.MODEL.FCOS
        if len({s.channels for s in input_shape}) != 1:
            raise ValueError("FCOS needs the same number of channels on every level")
        if fcos.USE_DEFORMABLE:
            raise ValueError("MODEL.FCOS.USE_DEFORMABLE needs compiled ops; not supported")
        return {"in_channels": input_shape[0].channels, "num_classes": fcos.NUM_CLASSES,
                "num_levels": len(input_shape), "num_cls_convs": fcos.NUM_CLS_CONVS,
                "num_box_convs": fcos.NUM_BOX_CONVS, "num_share_convs": fcos.NUM_SHARE_CONVS,
                "norm": fcos.NORM, "prior_prob": fcos.PRIOR_PROB, "use_scale": fcos.USE_SCALE}

    def forward(self, features: list[Tensor], top_module: nn.Module | None = None) -> HeadOutputs:
        """Per level: class logits, (l,t,r,b) in stride units, centerness logits, top feats."""
        logits, bbox_reg, ctrness = [], [], []
        top_feats: list[Tensor] | None = [] if top_module is not None else None
        for level, feature in enumerate(features):
            feature = self.share_tower(feature, level)
            box_tower = self.bbox_tower(feature, level)
            logits.append(self.cls_logits(self.cls_tower(feature, level)))
            ctrness.append(self.ctrness(box_tower))
            reg = self.bbox_pred(box_tower)
            if self.scales is not None:
                reg = self.scales[level](reg)
            bbox_reg.append(torch.relu(reg))
            if top_feats is not None and top_module is not None:
                top_feats.append(top_module(box_tower))
        return logits, bbox_reg, ctrness, top_feats


@PROPOSAL_GENERATOR_REGISTRY.register()
class FCOS(nn.Module):
    """Anchor-free one-stage detector used as the proposal generator of BlendMask/CondInst.

    In training, returns ``(FCOSTrainResult, losses)``: the positive locations and the box-loss
    normaliser the mask heads share. At test time, returns ``(detections per image, {})``.
    """

    @configurable
    def __init__(self, *, head: FCOSHead, in_features: list[str], strides: list[int],
                 loss_cfg: FCOSLossConfig, test_cfg: FCOSInferenceConfig) -> None:
        super().__init__()
        self.fcos_head = head
        self.in_features = list(in_features)
        self.strides = list(strides)
        self.loss_cfg = loss_cfg
        self.test_cfg = test_cfg

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        fcos = cfg.MODEL.FCOS
        if fcos.LOC_LOSS_TYPE != "giou" or fcos.BOX_QUALITY != "ctrness":
            raise ValueError("only LOC_LOSS_TYPE 'giou' with BOX_QUALITY 'ctrness' is supported")
        if len(fcos.SIZES_OF_INTEREST) + 1 != len(fcos.IN_FEATURES):
            raise ValueError("MODEL.FCOS.SIZES_OF_INTEREST needs one entry less than "
                             f"IN_FEATURES ({fcos.SIZES_OF_INTEREST} vs {fcos.IN_FEATURES})")
        loss_cfg = FCOSLossConfig(
            num_classes=fcos.NUM_CLASSES, sizes_of_interest=tuple(fcos.SIZES_OF_INTEREST),
            center_sample=fcos.CENTER_SAMPLE, pos_radius=fcos.POS_RADIUS,
            focal_alpha=fcos.LOSS_ALPHA, focal_gamma=fcos.LOSS_GAMMA,
            loss_weight_cls=fcos.LOSS_WEIGHT_CLS)
        test_cfg = FCOSInferenceConfig(
            score_thresh=fcos.INFERENCE_TH_TEST, pre_nms_topk=fcos.PRE_NMS_TOPK_TEST,
            post_nms_topk=fcos.POST_NMS_TOPK_TEST, nms_thresh=fcos.NMS_TH,
            thresh_with_ctr=fcos.THRESH_WITH_CTR)
        shapes = [input_shape[f] for f in fcos.IN_FEATURES]
        return {"head": FCOSHead(cfg, shapes), "in_features": fcos.IN_FEATURES,
                "strides": fcos.FPN_STRIDES, "loss_cfg": loss_cfg, "test_cfg": test_cfg}

    def forward(self, images: ImageList, features: dict[str, Tensor],
                gt_instances: list[Instances] | None = None,
                top_module: nn.Module | None = None,
                ) -> tuple[FCOSTrainResult | list[Instances], dict[str, Tensor]]:
        feats = [features[f] for f in self.in_features]
        locations = [compute_locations(f.shape[2], f.shape[3], s, f.device)
                     for f, s in zip(feats, self.strides, strict=True)]
        logits, bbox_reg, ctrness, top_feats = self.fcos_head(feats, top_module)
        if self.training:
            if gt_instances is None:
                raise ValueError("FCOS needs gt_instances in training")
            return fcos_losses(logits, bbox_reg, ctrness, top_feats, locations, self.strides,
                               gt_instances, self.loss_cfg)
        return fcos_inference(logits, bbox_reg, ctrness, top_feats, locations, self.strides,
                              list(images.image_sizes), self.test_cfg), {}
