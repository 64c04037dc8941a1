"""CondInst (Tian et al., 2020): masks from per-instance dynamic 1x1 convs on shared features.

FCOS finds objects; ``controller`` emits, for every location, the 169 weights of a tiny mask
head that runs on the ``mask_branch`` features plus coordinates relative to that location.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks
from torch import Tensor, nn

from orchestrator.evaluation.postprocess import (
    DEFAULT_CHUNK_BYTES,
    collect_bitmasks,
    global_mask_chunks,
)
from orchestrator.models.base import OneStageSegmentor
from orchestrator.models.fcos_outputs import FCOSTrainResult
from orchestrator.models.layers import (
    aligned_bilinear,
    compute_locations,
    conv_norm_relu,
    normal_init,
)
from orchestrator.models.losses import dice_loss
from orchestrator.models.semantic import semantic_layers, semantic_loss, semantic_targets

__all__ = ["CondInst", "MaskBranch", "DynamicMaskHead", "parse_dynamic_params",
           "postprocess_masks", "topk_per_gt"]


class MaskBranch(nn.Module):
    """Refine p3-p5, merge them at p3's stride with aligned_bilinear, then a conv tower.

    With ``semantic_classes`` > 0 (SEMANTIC_LOSS_ON) it also owns the auxiliary semantic head
    (``seg_head`` + ``logits`` on p3), trained by ``semantic_loss`` and unused at inference.
    """

    @configurable
    def __init__(self, *, in_features: list[str], in_channels: int, channels: int,
                 out_channels: int, num_convs: int, norm: str, semantic_classes: int = 0,
                 out_stride: int = 8, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0) -> None:
        super().__init__()
        self.in_features = list(in_features)
        self.refine = nn.ModuleList(
            [conv_norm_relu(in_channels, channels, 3, norm) for _ in in_features])
        tower = [conv_norm_relu(channels, channels, 3, norm) for _ in range(num_convs)]
        self.tower = nn.Sequential(*tower, nn.Conv2d(channels, out_channels, 1))
        self.seg_head: nn.Module | None = None
        self.logits: nn.Module | None = None
        if semantic_classes > 0:
            self.seg_head, self.logits = semantic_layers(in_channels, channels,
                                                         semantic_classes, norm)
        self.out_stride = out_stride
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        branch = cfg.MODEL.CONDINST.MASK_BRANCH
        fcos = cfg.MODEL.FCOS
        return {"in_features": branch.IN_FEATURES,
                "in_channels": input_shape[branch.IN_FEATURES[0]].channels,
                "channels": branch.CHANNELS, "out_channels": branch.OUT_CHANNELS,
                "num_convs": branch.NUM_CONVS, "norm": branch.NORM,
                "semantic_classes": fcos.NUM_CLASSES if branch.SEMANTIC_LOSS_ON else 0,
                "out_stride": input_shape[branch.IN_FEATURES[0]].stride,
                "focal_alpha": fcos.LOSS_ALPHA, "focal_gamma": fcos.LOSS_GAMMA}

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = self.refine[0](features[self.in_features[0]])
        for refine, name in zip(self.refine[1:], self.in_features[1:], strict=True):
            y = refine(features[name])
            x = x + aligned_bilinear(y, x.shape[2] // y.shape[2])
        return self.tower(x)

    def semantic_loss(self, features: dict[str, Tensor],
                      gt_instances: list[Instances]) -> dict[str, Tensor]:
        """``loss_sem`` when the semantic head is on (needs ``gt_bitmasks_full``), else {}."""
        if self.seg_head is None or self.logits is None:
            return {}
        logits = self.logits(self.seg_head(features[self.in_features[0]]))
        targets = semantic_targets(gt_instances, self.out_stride)
        return {"loss_sem": semantic_loss(logits, targets, alpha=self.focal_alpha,
                                          gamma=self.focal_gamma)}


def parse_dynamic_params(params: Tensor, in_channels: int, channels: int,
                         num_layers: int) -> tuple[list[Tensor], list[Tensor]]:
    """Split (n, P) controller outputs into grouped-conv weights and biases per layer.

    The layout is all weights layer by layer ((out, in) order), then all biases.
    """
    n = len(params)
    dims = [in_channels] + [channels] * (num_layers - 1) + [1]
    weight_nums = [dims[i] * dims[i + 1] for i in range(num_layers)]
    bias_nums = dims[1:]
    chunks = params.split(weight_nums + bias_nums, dim=1)
    weights = [w.reshape(n * dims[i + 1], dims[i], 1, 1)
               for i, w in enumerate(chunks[:num_layers])]
    biases = [b.reshape(n * dims[i + 1]) for i, b in enumerate(chunks[num_layers:])]
    return weights, biases


class DynamicMaskHead(nn.Module):
    """Runs each instance's own 1x1 conv stack (as one grouped conv) on its image's features."""

    sizes_of_interest: Tensor
    _iter: Tensor

    @configurable
    def __init__(self, *, in_channels: int, channels: int, num_layers: int,
                 mask_feat_stride: int, mask_out_stride: int, sizes_of_interest: list[int],
                 disable_rel_coords: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.channels = channels
        self.num_layers = num_layers
        self.mask_feat_stride = mask_feat_stride
        self.mask_out_stride = mask_out_stride
        self.disable_rel_coords = disable_rel_coords
        soi = [*sizes_of_interest, sizes_of_interest[-1] * 2]
        self.register_buffer("sizes_of_interest", torch.tensor(soi, dtype=torch.int64))
        # Checkpoint compatibility: the reference counts iterations here (BoxInst warm-up).
        self.register_buffer("_iter", torch.zeros([1]))

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        head = cfg.MODEL.CONDINST.MASK_HEAD
        if head.USE_FP16:
            raise ValueError("MODEL.CONDINST.MASK_HEAD.USE_FP16 is not supported")
        return {"in_channels": cfg.MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS,
                "channels": head.CHANNELS, "num_layers": head.NUM_LAYERS,
                "mask_feat_stride": cfg.MODEL.FCOS.FPN_STRIDES[0],
                "mask_out_stride": cfg.MODEL.CONDINST.MASK_OUT_STRIDE,
                "sizes_of_interest": list(cfg.MODEL.FCOS.SIZES_OF_INTEREST),
                "disable_rel_coords": head.DISABLE_REL_COORDS}

    @property
    def num_inputs(self) -> int:
        """Input channels of the first dynamic layer: the mask features, plus (rel-x, rel-y)
        unless DISABLE_REL_COORDS."""
        return self.in_channels + (0 if self.disable_rel_coords else 2)

    @property
    def num_gen_params(self) -> int:
        """Width of ``controller``: 169 with coordinates, 153 without (8 mask channels)."""
        dims = [self.num_inputs] + [self.channels] * (self.num_layers - 1) + [1]
        return sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(self.num_layers))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        # CondInst checkpoints from before March 2021 have no _iter: keep ours, not "missing".
        state_dict.setdefault(prefix + "_iter", self._iter.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _relative_coords(self, instances: Instances, h: int, w: int) -> Tensor:
        """(n, 2, h*w) of (instance location - pixel location) / size of interest of its level."""
        locs = compute_locations(h, w, self.mask_feat_stride, instances.locations.device)
        rel = instances.locations[:, None, :] - locs[None, :, :]
        soi = self.sizes_of_interest[instances.fpn_levels].float()
        return rel.permute(0, 2, 1) / soi[:, None, None]

    def forward(self, mask_feats: Tensor, instances: Instances) -> Tensor:
        """Mask logits (n, 1, H, W) at MASK_OUT_STRIDE for instances with ``im_inds``,
        ``locations``, ``fpn_levels`` and ``top_feats`` (the controller outputs)."""
        n, (_, c, h, w) = len(instances), mask_feats.shape
        feats = mask_feats[instances.im_inds].reshape(n, c, h * w)
        if not self.disable_rel_coords:
            coords = self._relative_coords(instances, h, w).to(feats.dtype)
            feats = torch.cat([coords, feats], dim=1)
        x = feats.reshape(1, n * feats.shape[1], h, w)
        weights, biases = parse_dynamic_params(instances.top_feats, self.num_inputs,
                                               self.channels, self.num_layers)
        for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            x = F.conv2d(x, weight, bias=bias, groups=n)
            if i < self.num_layers - 1:
                x = F.relu(x)
        logits = x.reshape(n, 1, h, w)
        return aligned_bilinear(logits, self.mask_feat_stride // self.mask_out_stride)

    def loss(self, mask_feats: Tensor, positives: Instances, gt_bitmasks: Tensor) -> Tensor:
        """Mean dice loss over the positive locations, each against its GT mask at stride 4."""
        if self.training:
            self._iter += 1
        if len(positives) == 0:  # keep the graph connected (DDP)
            return mask_feats.sum() * 0 + positives.top_feats.sum() * 0
        probs = self(mask_feats, positives).sigmoid()
        return dice_loss(probs, gt_bitmasks[positives.gt_inds]).mean()


def postprocess_masks(probs: Tensor, padded_size: tuple[int, int], image_size: tuple[int, int],
                      output_size: tuple[int, int], chunk_bytes: int) -> Tensor:
    """Stride-4 mask probabilities (n, 1, h, w) of a padded input -> bool (n, H, W) masks.

    The reference's steps (aligned_bilinear to the padded size, crop, bilinear resize, > 0.5)
    run by the shared chunked postprocess, so float masks never exceed ``chunk_bytes``.
    """
    chunks = global_mask_chunks(probs[:, 0], stride=padded_size[0] // probs.shape[2],
                                input_size=image_size, output_size=output_size,
                                chunk_bytes=chunk_bytes)
    return collect_bitmasks(chunks, len(probs), output_size, device=probs.device)


def _postprocess(results: Instances, probs: Tensor, padded_size: tuple[int, int],
                 output_size: tuple[int, int], chunk_bytes: int) -> Instances:
    """Boxes scaled to the output size, clipped, empty ones dropped; bool masks pasted."""
    out_h, out_w = output_size
    img_h, img_w = results.image_size
    boxes = results.pred_boxes.clone()
    boxes.scale(out_w / img_w, out_h / img_h)
    boxes.clip(output_size)
    keep = boxes.nonempty()
    out = Instances(output_size)
    out.pred_boxes = boxes[keep]
    out.scores = results.scores[keep]
    out.pred_classes = results.pred_classes[keep]
    out.pred_masks = postprocess_masks(probs[keep], padded_size, results.image_size, output_size,
                                       chunk_bytes)
    return out


def _gt_bitmasks(instances: Instances, padded_size: tuple[int, int]) -> Tensor:
    """Full-resolution GT masks on the padded canvas (polygons rasterised there)."""
    h, w = padded_size
    masks = instances.gt_masks
    if isinstance(masks, PolygonMasks):
        return BitMasks.from_polygon_masks(masks, h, w).tensor.to(instances.gt_boxes.device)
    tensor = masks.tensor if isinstance(masks, BitMasks) else masks
    return F.pad(tensor, (0, w - tensor.shape[2], 0, h - tensor.shape[1]))


def _check_proposal_caps(max_proposals: int, topk_proposals_per_im: int) -> None:
    """-1 switches a cap off; MAX_PROPOSALS 0 would train the mask head on nothing."""
    if max_proposals == 0 or max_proposals < -1:
        raise ValueError("MODEL.CONDINST.MAX_PROPOSALS must be -1 (all positives) or a positive "
                         f"number of instances, got {max_proposals}")
    if topk_proposals_per_im < -1:
        raise ValueError("MODEL.CONDINST.TOPK_PROPOSALS_PER_IM must be -1 (off) or >= 0, got "
                         f"{topk_proposals_per_im}")
    if max_proposals != -1 and topk_proposals_per_im != -1:
        raise ValueError("MODEL.CONDINST.MAX_PROPOSALS and TOPK_PROPOSALS_PER_IM cannot both be "
                         "on (set one of them to -1)")


def topk_per_gt(positives: Instances, k: int) -> Tensor:
    """Indices of the positives kept by TOPK_PROPOSALS_PER_IM = k: in each image, every GT
    instance with positive locations keeps its max(k // (number of such GTs), 1) best by
    sigmoid(cls) * sigmoid(ctr)."""
    scores = positives.logits_pred.sigmoid().max(dim=1).values
    scores = scores * positives.ctrness_pred.sigmoid()
    kept = [positives.gt_inds.new_zeros(0)]
    for image in positives.im_inds.unique(sorted=True):
        in_image = positives.im_inds == image
        gts = positives.gt_inds[in_image].unique(sorted=True)
        per_gt = max(k // len(gts), 1)
        for gt in gts:
            idx = torch.nonzero(in_image & (positives.gt_inds == gt)).squeeze(1)
            kept.append(idx[scores[idx].topk(min(per_gt, len(idx))).indices])
    return torch.cat(kept)


@META_ARCH_REGISTRY.register()
class CondInst(OneStageSegmentor):
    """CondInst meta-architecture: FCOS + mask branch + controller + dynamic mask head."""

    @configurable
    def __init__(self, *, backbone: Backbone, proposal_generator: nn.Module,
                 pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...],
                 mask_branch: MaskBranch, mask_head: DynamicMaskHead, controller_in: int,
                 mask_out_stride: int, max_proposals: int = -1, topk_proposals_per_im: int = -1,
                 mask_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        super().__init__(backbone=backbone, proposal_generator=proposal_generator,
                         pixel_mean=pixel_mean, pixel_std=pixel_std)
        _check_proposal_caps(max_proposals, topk_proposals_per_im)
        self.mask_head = mask_head
        self.mask_branch = mask_branch
        self.controller = normal_init(
            nn.Conv2d(controller_in, mask_head.num_gen_params, 3, padding=1), std=0.01)
        self.mask_out_stride = mask_out_stride
        self.max_proposals = max_proposals
        self.topk_proposals_per_im = topk_proposals_per_im
        self.mask_chunk_bytes = mask_chunk_bytes

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        ret = cls.base_config(cfg)
        shapes = ret["backbone"].output_shape()
        cond = cfg.MODEL.CONDINST
        ret.update(mask_branch=MaskBranch(cfg, shapes), mask_head=DynamicMaskHead(cfg),
                   controller_in=shapes[cfg.MODEL.FCOS.IN_FEATURES[0]].channels,
                   mask_out_stride=cond.MASK_OUT_STRIDE, max_proposals=cond.MAX_PROPOSALS,
                   topk_proposals_per_im=cond.TOPK_PROPOSALS_PER_IM,
                   mask_chunk_bytes=cfg.get("ORCHESTRATOR", {}).get("EVAL_CHUNK_BYTES",
                                                                    DEFAULT_CHUNK_BYTES))
        return ret

    def forward(self, batched_inputs: list[dict[str, Any]]) -> Any:
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        mask_feats = self.mask_branch(features)
        if self.training:
            return self._losses(images, features, mask_feats, self.gt_instances(batched_inputs))
        detections, _ = self.proposal_generator(images, features, None, self.controller)
        return self._inference(batched_inputs, images, mask_feats, detections)

    def _losses(self, images: ImageList, features: dict[str, Tensor], mask_feats: Tensor,
                gt_instances: list[Instances]) -> dict[str, Tensor]:
        padded = tuple(images.tensor.shape[-2:])
        start = self.mask_out_stride // 2
        for inst in gt_instances:
            inst.gt_bitmasks_full = _gt_bitmasks(inst, padded)  # FCOS: centres of mass
        fcos: FCOSTrainResult
        fcos, losses = self.proposal_generator(images, features, gt_instances, self.controller)
        losses.update(self.mask_branch.semantic_loss(features, gt_instances))
        gt_bitmasks = torch.cat([inst.gt_bitmasks_full[:, start::self.mask_out_stride,
                                                       start::self.mask_out_stride]
                                 for inst in gt_instances])
        positives = self._select_positives(fcos.positives)
        losses["loss_mask"] = self.mask_head.loss(mask_feats, positives, gt_bitmasks)
        return losses

    def _select_positives(self, positives: Instances) -> Instances:
        """Cap the instances the mask loss sees: a random subset, or the best per GT."""
        if self.max_proposals != -1:
            if len(positives) <= self.max_proposals:
                return positives
            keep = torch.randperm(len(positives), device=positives.gt_inds.device)
            return positives[keep[: self.max_proposals]]
        if self.topk_proposals_per_im != -1:
            return positives[topk_per_gt(positives, self.topk_proposals_per_im)]
        return positives

    def _inference(self, batched_inputs: list[dict[str, Any]], images: ImageList,
                   mask_feats: Tensor, detections: list[Instances]) -> list[dict[str, Instances]]:
        for i, det in enumerate(detections):
            det.im_inds = torch.full_like(det.pred_classes, i)
        merged = Instances.cat(detections)
        factor = self.mask_head.mask_feat_stride // self.mask_out_stride
        probs = (self.mask_head(mask_feats, merged).sigmoid() if len(merged)
                 else mask_feats.new_zeros((0, 1, *[s * factor for s in mask_feats.shape[2:]])))
        padded = (int(images.tensor.shape[-2]), int(images.tensor.shape[-1]))
        outputs = []
        for det, det_probs, inputs in zip(detections, probs.split([len(d) for d in detections]),
                                          batched_inputs, strict=True):
            size = (inputs.get("height", det.image_size[0]), inputs.get("width", det.image_size[1]))
            outputs.append({"instances": _postprocess(det, det_probs, padded, size,
                                                      self.mask_chunk_bytes)})
        return outputs
