"""FCOS training targets, losses and inference, as functions of the head's per-level outputs.

Per-location tensors are flattened level-major then image-major (level 0 of image 0, level 0 of
image 1, ..., level 1 of image 0, ...), the order ``_flatten`` gives the head's outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.layers import batched_nms, cat
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from torch import Tensor

from orchestrator.models.losses import centerness_targets, giou_loss, sigmoid_focal_loss

__all__ = [
    "FCOSLossConfig",
    "FCOSInferenceConfig",
    "FCOSTrainResult",
    "size_ranges",
    "assign_image_targets",
    "fcos_losses",
    "fcos_inference",
]

INF = 100000000.0


@dataclass(frozen=True, kw_only=True)
class FCOSLossConfig:
    num_classes: int
    sizes_of_interest: tuple[int, ...]
    center_sample: bool = True
    pos_radius: float = 1.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    loss_weight_cls: float = 1.0


@dataclass(frozen=True, kw_only=True)
class FCOSInferenceConfig:
    score_thresh: float = 0.05
    pre_nms_topk: int = 1000
    post_nms_topk: int = 100
    nms_thresh: float = 0.6
    thresh_with_ctr: bool = False


@dataclass
class FCOSTrainResult:
    """What the mask heads need from FCOS in training: one row per positive location
    (``im_inds``, ``gt_inds`` global over the batch, ``fpn_levels``, ``locations``,
    ``top_feats``, ``gt_ctrs``, ``logits_pred``, ``ctrness_pred``), and the centerness-sum
    normaliser of the box loss, which BlendMask's mask loss shares."""

    positives: Instances
    loss_denorm: Tensor


def size_ranges(sizes_of_interest: tuple[int, ...] | list[int]) -> list[tuple[float, float]]:
    """Per-level [lo, hi] bounds on max(l, t, r, b): [-1, s0], [s0, s1], ..., [s_last, INF]."""
    bounds = [-1.0, *(float(s) for s in sizes_of_interest), INF]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _center_region_mask(locations: Tensor, strides: Tensor, boxes: Tensor, centers: Tensor,
                        radius: float) -> Tensor:
    """(L, G) locations strictly inside the +-radius*stride square around each GT centre,
    clipped to the GT box."""
    r = strides[:, None] * radius
    x0 = torch.max(centers[None, :, 0] - r, boxes[None, :, 0])
    y0 = torch.max(centers[None, :, 1] - r, boxes[None, :, 1])
    x1 = torch.min(centers[None, :, 0] + r, boxes[None, :, 2])
    y1 = torch.min(centers[None, :, 1] + r, boxes[None, :, 3])
    xs, ys = locations[:, 0:1], locations[:, 1:2]
    dists = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2)
    return dists.min(dim=2).values > 0


def assign_image_targets(locations: Tensor, strides: Tensor, ranges: Tensor, boxes: Tensor,
                         classes: Tensor, cfg: FCOSLossConfig,
                         centers: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-location (label, (l,t,r,b) in pixels, GT index or -1) for one image.

    A location is positive for a GT when it passes the centre-sampling test (or lies in the box
    without centre sampling) and max(l,t,r,b) falls in its level's range; ties go to the GT
    with the smallest box area. ``centers`` defaults to the box centres (CondInst passes mask
    centres of mass).
    """
    num = len(locations)
    if len(boxes) == 0:
        return (torch.full((num,), cfg.num_classes, dtype=torch.int64, device=locations.device),
                locations.new_zeros((num, 4)),
                torch.full((num,), -1, dtype=torch.int64, device=locations.device))
    xs, ys = locations[:, 0:1], locations[:, 1:2]
    reg = torch.stack([xs - boxes[None, :, 0], ys - boxes[None, :, 1],
                       boxes[None, :, 2] - xs, boxes[None, :, 3] - ys], dim=2)
    if cfg.center_sample:
        if centers is None:
            centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = _center_region_mask(locations, strides, boxes, centers, cfg.pos_radius)
    else:
        inside = reg.min(dim=2).values > 0
    max_reg = reg.max(dim=2).values
    in_range = (max_reg >= ranges[:, 0:1]) & (max_reg <= ranges[:, 1:2])
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].repeat(num, 1)
    areas[~(inside & in_range)] = INF
    min_area, inds = areas.min(dim=1)
    background = min_area == INF
    labels = classes[inds].clone()
    labels[background] = cfg.num_classes
    gt_inds = torch.where(background, torch.full_like(inds, -1), inds)
    return labels, reg[torch.arange(num, device=reg.device), inds], gt_inds


def _mass_centers(bitmasks: Tensor) -> Tensor:
    """(G, 2) centres of mass (x, y) in pixels of full-resolution GT bitmasks."""
    masks = bitmasks.float()
    h, w = masks.shape[1:]
    ys = torch.arange(h, dtype=torch.float32, device=masks.device)
    xs = torch.arange(w, dtype=torch.float32, device=masks.device)
    m00 = masks.sum(dim=(1, 2)).clamp(min=1e-6)
    cx = (masks * xs[None, None, :]).sum(dim=(1, 2)) / m00
    cy = (masks * ys[None, :, None]).sum(dim=(1, 2)) / m00
    return torch.stack([cx, cy], dim=1)


def _flatten(per_level: list[Tensor]) -> Tensor:
    """N x C x H x W per level -> (sum_l N*H*W) x C, level-major then image-major."""
    return cat([x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) for x in per_level], dim=0)


def _reduce_mean(value: Tensor) -> Tensor:
    """Average over workers, so every worker normalises its loss by the same count."""
    world = comm.get_world_size()
    if world > 1 and dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value = value / world
    return value


def _batch_targets(locations: list[Tensor], strides: list[int], gt_instances: list[Instances],
                   cfg: FCOSLossConfig) -> dict[str, Tensor]:
    """Targets for all images, flattened like ``_flatten`` (plus image index, level, location)."""
    sizes = [len(loc) for loc in locations]
    all_locs = cat(locations, dim=0)
    ranges = cat([all_locs.new_tensor(r).expand(n, 2) for r, n in
                  zip(size_ranges(cfg.sizes_of_interest), sizes, strict=True)], dim=0)
    loc_strides = cat([all_locs.new_full((n,), float(s)) for s, n in
                       zip(strides, sizes, strict=True)], dim=0)
    per_image: list[tuple[Tensor, Tensor, Tensor]] = []
    offset = 0
    for inst in gt_instances:
        centers = _mass_centers(inst.gt_bitmasks_full) if inst.has("gt_bitmasks_full") else None
        labels, reg, gt_inds = assign_image_targets(
            all_locs, loc_strides, ranges, inst.gt_boxes.tensor, inst.gt_classes, cfg, centers)
        per_image.append((labels, reg / loc_strides[:, None], gt_inds + (gt_inds >= 0) * offset))
        offset += len(inst)
    return _level_major(per_image, locations, sizes)


def _level_major(per_image: list[tuple[Tensor, Tensor, Tensor]], locations: list[Tensor],
                 sizes: list[int]) -> dict[str, Tensor]:
    """Re-order per-image targets (levels concatenated) into the level-major flat order."""
    splits = [[t.split(sizes) for t in triple] for triple in per_image]
    out: dict[str, list[Tensor]] = {k: [] for k in
                                    ("labels", "reg", "gt_inds", "im_inds", "levels", "locs")}
    for level, locs in enumerate(locations):
        for i, (labels, reg, gt_inds) in enumerate(splits):
            out["labels"].append(labels[level])
            out["reg"].append(reg[level])
            out["gt_inds"].append(gt_inds[level])
            out["im_inds"].append(torch.full_like(labels[level], i))
            out["levels"].append(torch.full_like(labels[level], level))
            out["locs"].append(locs)
    return {k: cat(v, dim=0) for k, v in out.items()}


def fcos_losses(logits: list[Tensor], bbox_reg: list[Tensor], ctrness: list[Tensor],
                top_feats: list[Tensor] | None, locations: list[Tensor], strides: list[int],
                gt_instances: list[Instances],
                cfg: FCOSLossConfig) -> tuple[FCOSTrainResult, dict[str, Tensor]]:
    """Focal classification loss, centerness-weighted GIoU box loss and centerness BCE."""
    t = _batch_targets(locations, strides, gt_instances, cfg)
    logits_f, reg_f, ctr_f = _flatten(logits), _flatten(bbox_reg), _flatten(ctrness)[:, 0]
    pos = torch.nonzero(t["labels"] != cfg.num_classes).squeeze(1)
    num_pos = max(_reduce_mean(pos.new_tensor([pos.numel()], dtype=torch.float32)).item(), 1.0)
    cls_target = torch.zeros_like(logits_f)
    cls_target[pos, t["labels"][pos]] = 1
    loss_cls = sigmoid_focal_loss(logits_f, cls_target, alpha=cfg.focal_alpha,
                                  gamma=cfg.focal_gamma) / num_pos * cfg.loss_weight_cls
    ctr_targets = centerness_targets(t["reg"][pos])
    loss_denorm = _reduce_mean(ctr_targets.sum().detach()).clamp(min=1e-6)
    if pos.numel() > 0:
        loss_loc = giou_loss(reg_f[pos], t["reg"][pos], ctr_targets) / loss_denorm
        loss_ctr = F.binary_cross_entropy_with_logits(
            ctr_f[pos], ctr_targets, reduction="sum") / num_pos
    else:  # keep the graph connected so DDP sees every parameter used
        loss_loc = reg_f.sum() * 0
        loss_ctr = ctr_f.sum() * 0
    positives = Instances((0, 0))
    positives.im_inds = t["im_inds"][pos]
    positives.gt_inds = t["gt_inds"][pos]
    positives.fpn_levels = t["levels"][pos]
    positives.locations = t["locs"][pos]
    positives.gt_ctrs = ctr_targets
    positives.logits_pred = logits_f[pos]
    positives.ctrness_pred = ctr_f[pos]
    if top_feats is not None:
        positives.top_feats = _flatten(top_feats)[pos]
    losses = {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}
    return FCOSTrainResult(positives=positives, loss_denorm=loss_denorm), losses


def _predict_level(locations: Tensor, logits: Tensor, bbox_reg: Tensor, ctrness: Tensor,
                   top_feats: Tensor | None, stride: int, level: int,
                   image_sizes: list[tuple[int, int]],
                   cfg: FCOSInferenceConfig) -> list[Instances]:
    """Candidates of one level for each image: thresholded, top-k by cls*ctr, boxes decoded."""
    n, c = logits.shape[:2]
    cls = logits.permute(0, 2, 3, 1).reshape(n, -1, c).sigmoid()
    reg = bbox_reg.permute(0, 2, 3, 1).reshape(n, -1, 4) * stride
    ctr = ctrness.permute(0, 2, 3, 1).reshape(n, -1).sigmoid()
    feats = None if top_feats is None else top_feats.permute(0, 2, 3, 1).reshape(
        n, -1, top_feats.shape[1])
    if cfg.thresh_with_ctr:
        cls = cls * ctr[:, :, None]
    candidates = cls > cfg.score_thresh
    if not cfg.thresh_with_ctr:
        cls = cls * ctr[:, :, None]
    results = []
    for i, image_size in enumerate(image_sizes):
        loc_idx, cls_idx = candidates[i].nonzero().unbind(dim=1)
        scores = cls[i][loc_idx, cls_idx]
        if len(scores) > cfg.pre_nms_topk:
            scores, keep = scores.topk(cfg.pre_nms_topk, sorted=False)
            loc_idx, cls_idx = loc_idx[keep], cls_idx[keep]
        locs, ltrb = locations[loc_idx], reg[i][loc_idx]
        boxes = torch.stack([locs[:, 0] - ltrb[:, 0], locs[:, 1] - ltrb[:, 1],
                             locs[:, 0] + ltrb[:, 2], locs[:, 1] + ltrb[:, 3]], dim=1)
        inst = Instances(image_size)
        inst.pred_boxes = Boxes(boxes)
        inst.scores = torch.sqrt(scores)
        inst.pred_classes = cls_idx
        inst.locations = locs
        inst.fpn_levels = torch.full_like(cls_idx, level)
        if feats is not None:
            inst.top_feats = feats[i][loc_idx]
        results.append(inst)
    return results


def _nms_and_topk(inst: Instances, cfg: FCOSInferenceConfig) -> Instances:
    keep = batched_nms(inst.pred_boxes.tensor, inst.scores, inst.pred_classes, cfg.nms_thresh)
    inst = inst[keep]
    if len(inst) > cfg.post_nms_topk > 0:
        kth = torch.kthvalue(inst.scores.cpu(), len(inst) - cfg.post_nms_topk + 1).values
        inst = inst[inst.scores >= kth.item()]
    return inst


def fcos_inference(logits: list[Tensor], bbox_reg: list[Tensor], ctrness: list[Tensor],
                   top_feats: list[Tensor] | None, locations: list[Tensor], strides: list[int],
                   image_sizes: list[tuple[int, int]],
                   cfg: FCOSInferenceConfig) -> list[Instances]:
    """Per image: candidates of every level, class-aware NMS, then the post-NMS top-k."""
    per_level = [
        _predict_level(locations[lv], logits[lv], bbox_reg[lv], ctrness[lv],
                       None if top_feats is None else top_feats[lv], strides[lv], lv,
                       image_sizes, cfg)
        for lv in range(len(logits))
    ]
    return [_nms_and_topk(Instances.cat([lv[i] for lv in per_level]), cfg)
            for i in range(len(image_sizes))]


def prior_bias(prior_prob: float) -> float:
    """Classifier bias so every class starts at probability ``prior_prob``."""
    return -math.log((1 - prior_prob) / prior_prob)
