"""CondInst's auxiliary semantic branch (the ``_sem`` configs): a per-pixel class head on p3.

Used in training only. Every pixel of the mask-branch grid is labelled with the class of the
smallest ground-truth mask covering it (0 where none does); the head predicts one sigmoid per
class, trained with the focal loss summed over pixels and classes and divided by the number of
positive (pixel, class) pairs. It shapes the shared features; inference never runs it.
"""

from __future__ import annotations

import math

import torch
from detectron2.structures import Instances
from torch import Tensor, nn

from orchestrator.models.layers import conv_norm_relu
from orchestrator.models.losses import sigmoid_focal_loss

__all__ = ["semantic_layers", "semantic_targets", "semantic_loss"]


def semantic_layers(in_channels: int, channels: int, num_classes: int, norm: str,
                    prior_prob: float = 0.01) -> tuple[nn.Sequential, nn.Conv2d]:
    """``seg_head`` (two 3x3 conv+norm+ReLU blocks) and ``logits`` (1x1 conv, one channel per
    class, bias at the focal-loss prior so the first iterations are not swamped)."""
    seg_head = nn.Sequential(conv_norm_relu(in_channels, channels, 3, norm),
                             conv_norm_relu(channels, channels, 3, norm))
    logits = nn.Conv2d(channels, num_classes, 1)
    nn.init.normal_(logits.weight, std=0.01)
    nn.init.constant_(logits.bias, -math.log((1 - prior_prob) / prior_prob))  # type: ignore[arg-type]
    return seg_head, logits


def semantic_targets(gt_instances: list[Instances], stride: int) -> Tensor:
    """(N, H/stride, W/stride) int64 labels from ``gt_bitmasks_full`` (padded canvas): the
    class + 1 of the smallest-area mask covering the pixel sampled at (stride/2 + k*stride)."""
    targets = []
    for inst in gt_instances:
        masks = inst.gt_bitmasks_full
        sampled = masks[:, stride // 2::stride, stride // 2::stride].bool()
        if len(masks) == 0:
            targets.append(torch.zeros(sampled.shape[1:], dtype=torch.int64,
                                       device=masks.device))
            continue
        areas = masks.flatten(1).sum(dim=1).float()
        per_pixel = torch.where(sampled, areas[:, None, None],
                                torch.full_like(areas, math.inf)[:, None, None])
        smallest, index = per_pixel.min(dim=0)
        labels = inst.gt_classes[index] + 1
        targets.append(torch.where(torch.isinf(smallest), torch.zeros_like(labels), labels))
    return torch.stack(targets)


def semantic_loss(logits: Tensor, targets: Tensor, *, alpha: float, gamma: float) -> Tensor:
    """Focal loss of (N, C, h, w) logits against labels 0..C (0 = background), summed and
    divided by the number of positive (pixel, class) pairs (at least 1)."""
    if targets.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"semantic targets {tuple(targets.shape[-2:])} do not match the "
                         f"logits {tuple(logits.shape[-2:])}")
    classes = torch.arange(1, logits.shape[1] + 1, device=logits.device)[None, :, None, None]
    one_hot = (targets[:, None] == classes).to(logits.dtype)
    num_pos = one_hot.sum().clamp(min=1.0)
    return sigmoid_focal_loss(logits, one_hot, alpha=alpha, gamma=gamma) / num_pos
