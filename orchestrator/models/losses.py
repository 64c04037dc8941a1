"""Loss functions of FCOS, BlendMask and CondInst, each a plain function of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sigmoid_focal_loss", "giou_loss", "dice_loss", "centerness_targets"]


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, *, alpha: float = 0.25,
                       gamma: float = 2.0) -> Tensor:
    """Summed focal loss (Lin et al.): down-weights easy negatives, which dominate FCOS cells."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum()


def giou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Summed (1 - GIoU) of boxes given as (l, t, r, b) distances from the same point; IoU gets
    +1 on intersection and union (the reference smoothing), so tiny boxes do not blow up."""
    pl, pt, pr, pb = pred.unbind(dim=1)
    tl, tt, tr, tb = target.unbind(dim=1)
    pred_area = (pl + pr) * (pt + pb)
    target_area = (tl + tr) * (tt + tb)
    inter = (torch.min(pl, tl) + torch.min(pr, tr)) * (torch.min(pt, tt) + torch.min(pb, tb))
    enclose = (torch.max(pl, tl) + torch.max(pr, tr)) * (torch.max(pt, tt) + torch.max(pb, tb))
    enclose = enclose + 1e-7
    union = target_area + pred_area - inter
    ious = (inter + 1.0) / (union + 1.0)
    losses = 1 - (ious - (enclose - union) / enclose)
    return (losses * weight).sum() if weight is not None else losses.sum()


def dice_loss(probs: Tensor, targets: Tensor) -> Tensor:
    """Per-instance dice loss 1 - 2*sum(p*t) / (sum(p^2) + sum(t^2) + 1e-5) over flat masks."""
    probs = probs.flatten(1)
    targets = targets.flatten(1).to(probs.dtype)
    inter = (probs * targets).sum(dim=1)
    union = (probs**2).sum(dim=1) + (targets**2).sum(dim=1) + 1e-5
    return 1.0 - 2 * inter / union


def centerness_targets(reg_targets: Tensor) -> Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)): 1 at the box centre, 0 at its border."""
    if reg_targets.numel() == 0:
        return reg_targets.new_zeros(len(reg_targets))
    lr = reg_targets[:, [0, 2]]
    tb = reg_targets[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (
        tb.min(dim=1).values / tb.max(dim=1).values)
    return torch.sqrt(ratio)
