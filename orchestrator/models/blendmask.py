"""BlendMask (Chen et al., 2020): instance masks blended from a few image-wide bases.

The basis module predicts K bases at stride 4; ``top_layer`` gives every FCOS location a
K x A x A attention map; the blender crops the bases at a box, resizes the attention to the
crop and sums the bases weighted by the softmax of the attention over K.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_sem_seg_head
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from orchestrator.models.base import OneStageSegmentor
from orchestrator.models.fcos_outputs import FCOSTrainResult
from orchestrator.models.layers import conv_norm_relu, normal_init
from orchestrator.models.panoptic import PanopticCombine

__all__ = ["BlendMask", "BasisModule", "Blender"]


def _seg_head(in_channels: int, channels: int, num_classes: int) -> nn.Sequential:
    """Auxiliary semantic head on p3 (training only): keys 0/1, 3/4 (conv, norm) and 6.

    Its norm is plain BatchNorm2d whatever BASIS_MODULE.NORM says, as in the reference (so a
    GN or SyncBN basis module still has BN statistics here, and checkpoints agree).
    """
    convs = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
             nn.Conv2d(channels, channels, 3, padding=1, bias=False)]
    for conv in convs:
        nn.init.kaiming_uniform_(conv.weight, a=1)
    return nn.Sequential(convs[0], nn.BatchNorm2d(channels), nn.ReLU(),
                         convs[1], nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.Conv2d(channels, num_classes + 1, 1))


class BasisModule(nn.Module):
    """ProtoNet: p3-p5 refined and summed at p3's size, a tower, x2 upsampling, K bases."""

    @configurable
    def __init__(self, *, in_features: list[str], in_channels: int, channels: int,
                 num_convs: int, num_bases: int, norm: str, loss_on: bool = False,
                 num_classes: int = 80, loss_weight: float = 0.3) -> None:
        super().__init__()
        self.in_features = list(in_features)
        self.refine = nn.ModuleList(
            [conv_norm_relu(in_channels, channels, 3, norm) for _ in in_features])
        self.tower = nn.Sequential(
            *[conv_norm_relu(channels, channels, 3, norm) for _ in range(num_convs)],
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv_norm_relu(channels, channels, 3, norm),
            nn.Conv2d(channels, num_bases, 1))
        self.loss_weight = loss_weight
        self.seg_head = _seg_head(in_channels, channels, num_classes) if loss_on else None

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        basis = cfg.MODEL.BASIS_MODULE
        return {"in_features": basis.IN_FEATURES,
                "in_channels": input_shape[basis.IN_FEATURES[0]].channels,
                "channels": basis.CONVS_DIM, "num_convs": basis.NUM_CONVS,
                "num_bases": basis.NUM_BASES, "norm": basis.NORM, "loss_on": basis.LOSS_ON,
                "num_classes": basis.NUM_CLASSES, "loss_weight": basis.LOSS_WEIGHT}

    def forward(self, features: dict[str, Tensor],
                sem_targets: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Bases (N, K, H/4, W/4), and ``loss_basis_sem`` when targets are given in training."""
        x = self.refine[0](features[self.in_features[0]])
        for refine, name in zip(self.refine[1:], self.in_features[1:], strict=True):
            x = x + F.interpolate(refine(features[name]), size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)
        bases = self.tower(x)
        losses = {}
        if self.training and self.seg_head is not None and sem_targets is not None:
            logits = self.seg_head(features[self.in_features[0]])
            target = F.interpolate(sem_targets[:, None].float(), size=logits.shape[-2:],
                                   mode="nearest")[:, 0].long()
            losses["loss_basis_sem"] = F.cross_entropy(logits, target) * self.loss_weight
        return bases, losses


class Blender:
    """Blends pooled bases with per-instance attention; owns a parameter-free ROIPooler (not an
    nn.Module, so the checkpoint has no ``blender`` keys)."""

    def __init__(self, cfg: CfgNode) -> None:
        blend = cfg.MODEL.BLENDMASK
        self.resolution = blend.BOTTOM_RESOLUTION
        self.attn_size = blend.ATTN_SIZE
        self.num_bases = cfg.MODEL.BASIS_MODULE.NUM_BASES
        self.interp = blend.TOP_INTERP
        self.loss_weight = blend.INSTANCE_LOSS_WEIGHT
        self.pooler = ROIPooler(output_size=self.resolution, scales=tuple(blend.POOLER_SCALES),
                                sampling_ratio=blend.POOLER_SAMPLING_RATIO,
                                pooler_type=blend.POOLER_TYPE, canonical_level=2)

    def blend(self, rois: Tensor, attns: Tensor) -> Tensor:
        """Mask logits (n, R, R) from pooled bases (n, K, R, R) and flat attentions (n, K*A*A)."""
        attns = attns.reshape(len(attns), self.num_bases, self.attn_size, self.attn_size)
        align = False if self.interp == "bilinear" else None
        attns = F.interpolate(attns, size=(self.resolution, self.resolution), mode=self.interp,
                              align_corners=align).softmax(dim=1)
        return (rois * attns).sum(dim=1)

    def loss(self, bases: Tensor, fcos: FCOSTrainResult, gt_instances: list[Instances]) -> Tensor:
        """Centerness-weighted BCE of each positive's mask, pooled at its GT box."""
        pos = fcos.positives
        if len(pos) == 0:  # keep the graph connected (DDP)
            return bases.sum() * 0 + pos.top_feats.sum() * 0
        rois = self.pooler([bases], [inst.gt_boxes for inst in gt_instances])[pos.gt_inds]
        logits = self.blend(rois, pos.top_feats)
        targets = torch.cat([inst.gt_masks.crop_and_resize(inst.gt_boxes.tensor, self.resolution)
                             for inst in gt_instances])[pos.gt_inds].to(logits.dtype)
        per_instance = F.binary_cross_entropy_with_logits(
            logits, targets, reduction="none").mean(dim=(1, 2))
        return (per_instance * pos.gt_ctrs).sum() / fcos.loss_denorm * self.loss_weight

    def predict(self, bases: Tensor, detections: list[Instances]) -> None:
        """Adds ``pred_masks`` (n, 1, R, R) probabilities to each image's detections."""
        boxes: list[Boxes] = [det.pred_boxes for det in detections]
        rois = self.pooler([bases], boxes)
        attns = torch.cat([det.top_feats for det in detections])
        probs = self.blend(rois, attns).sigmoid()[:, None]
        for det, masks in zip(detections, probs.split([len(d) for d in detections]), strict=True):
            det.pred_masks = masks


@META_ARCH_REGISTRY.register()
class BlendMask(OneStageSegmentor):
    """BlendMask meta-architecture: FCOS + basis module + attention ``top_layer`` + blender."""

    @configurable
    def __init__(self, *, backbone: Backbone, proposal_generator: nn.Module,
                 pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...],
                 basis_module: BasisModule, blender: Blender, top_in_channels: int,
                 panoptic_module: nn.Module | None = None,
                 panoptic_combine: PanopticCombine | None = None) -> None:
        super().__init__(backbone=backbone, proposal_generator=proposal_generator,
                         pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.basis_module = basis_module
        # Panoptic configs: detectron2's semantic FPN head for the stuff classes (trained on
        # ``sem_seg``), combined with the instances into ``panoptic_seg`` at inference.
        self.panoptic_module = panoptic_module
        self.panoptic_combine = panoptic_combine
        self.blender = blender
        attn_len = blender.num_bases * blender.attn_size**2
        self.top_layer = normal_init(nn.Conv2d(top_in_channels, attn_len, 3, padding=1))

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        ret = cls.base_config(cfg)
        shapes = ret["backbone"].output_shape()
        ret.update(basis_module=BasisModule(cfg, shapes), blender=Blender(cfg),
                   top_in_channels=shapes[cfg.MODEL.FCOS.IN_FEATURES[0]].channels)
        if cfg.MODEL.PANOPTIC_FPN.COMBINE.ENABLED:
            ret["panoptic_module"] = build_sem_seg_head(cfg, shapes)
            ret["panoptic_combine"] = PanopticCombine.from_config(cfg)
        return ret

    def forward(self, batched_inputs: list[dict[str, Any]]) -> Any:
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if self.training:
            return self._losses(batched_inputs, images, features)
        bases, _ = self.basis_module(features)
        detections, _ = self.proposal_generator(images, features, None, self.top_layer)
        self.blender.predict(bases, detections)
        outputs = [{"instances": _strip(detector_postprocess(
            det, x.get("height", det.image_size[0]), x.get("width", det.image_size[1])))}
            for det, x in zip(detections, batched_inputs, strict=True)]
        if self.panoptic_module is not None:
            self._panoptic(outputs, images, features)
        return outputs

    def _panoptic(self, outputs: list[dict[str, Any]], images: ImageList,
                  features: dict[str, Tensor]) -> None:
        """Adds ``panoptic_seg`` and ``sem_seg_labels`` (never full-size logits) to outputs."""
        assert self.panoptic_module is not None and self.panoptic_combine is not None
        sem_seg, _ = self.panoptic_module(features)
        for out, logits, size in zip(outputs, sem_seg, images.image_sizes, strict=True):
            out.update(self.panoptic_combine(out["instances"], logits, size))

    def _losses(self, batched_inputs: list[dict[str, Any]], images: ImageList,
                features: dict[str, Tensor]) -> dict[str, Tensor]:
        gt_instances = self.gt_instances(batched_inputs)
        sem = None
        if all("basis_sem" in x for x in batched_inputs):
            sem = ImageList.from_tensors([x["basis_sem"].to(self.device) for x in batched_inputs],
                                         self.backbone.size_divisibility, pad_value=0).tensor
        bases, losses = self.basis_module(features, sem)
        fcos: FCOSTrainResult
        fcos, det_losses = self.proposal_generator(images, features, gt_instances, self.top_layer)
        losses.update(det_losses)
        losses["loss_mask"] = self.blender.loss(bases, fcos, gt_instances)
        if self.panoptic_module is not None:
            losses.update(self._sem_seg_losses(batched_inputs, features))
        return losses

    def _sem_seg_losses(self, batched_inputs: list[dict[str, Any]],
                        features: dict[str, Tensor]) -> dict[str, Tensor]:
        """``loss_sem_seg`` of the panoptic head: targets padded with its ignore value, as
        detectron2's PanopticFPN pads them (the head scales the loss by its LOSS_WEIGHT)."""
        assert self.panoptic_module is not None
        if any("sem_seg" not in x for x in batched_inputs):
            raise ValueError("panoptic training inputs need 'sem_seg' (the mapper reads it from "
                             "sem_seg_file_name when MODEL.PANOPTIC_FPN.COMBINE.ENABLED)")
        ignore = int(getattr(self.panoptic_module, "ignore_value", 255))
        targets = ImageList.from_tensors([x["sem_seg"].to(self.device) for x in batched_inputs],
                                         self.backbone.size_divisibility, pad_value=ignore).tensor
        _, losses = self.panoptic_module(features, targets)
        return dict(losses)


def _strip(inst: Instances) -> Instances:
    """Only detectron2's standard prediction fields leave the model."""
    out = Instances(inst.image_size)
    for name in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        out.set(name, inst.get(name))
    return out
