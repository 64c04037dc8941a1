"""CondInst's semantic branch: smallest-mask pixel labels and the focal loss normaliser."""

from __future__ import annotations

import math

import torch
from detectron2.structures import Instances

from orchestrator.models.semantic import semantic_layers, semantic_loss, semantic_targets


def test_each_pixel_takes_the_class_of_the_smallest_covering_mask() -> None:
    masks = torch.zeros(3, 16, 16, dtype=torch.uint8)
    masks[0] = 1  # class 0 everywhere
    masks[1, :8, :8] = 1  # class 2 in the top-left quarter (smaller, wins there)
    masks[2, 12:, 12:] = 1  # class 1, only pixels 12..15: sampled at 14
    inst = Instances((16, 16), gt_bitmasks_full=masks, gt_classes=torch.tensor([0, 2, 1]))
    empty = Instances((16, 16), gt_bitmasks_full=masks[:0], gt_classes=torch.tensor([]).long())
    targets = semantic_targets([inst, empty], stride=4)  # samples rows/cols 2, 6, 10, 14
    assert targets[0].tolist() == [[3, 3, 1, 1], [3, 3, 1, 1], [1, 1, 1, 1], [1, 1, 1, 2]]
    assert targets[1].tolist() == [[0] * 4] * 4


def test_focal_loss_is_summed_and_divided_by_the_positives() -> None:
    logits = torch.zeros(1, 2, 2, 2)  # p = 0.5 everywhere
    targets = torch.tensor([[[1, 0], [0, 2]]])  # two positive (pixel, class) pairs
    loss = semantic_loss(logits, targets, alpha=0.25, gamma=2.0)
    per = math.log(2) * 0.25  # BCE at p=0.5 times (1 - p_t)^2
    expected = (2 * 0.25 * per + 6 * 0.75 * per) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert semantic_loss(logits, torch.zeros(1, 2, 2).long(), alpha=0.25, gamma=2.0) > 0


def test_layers_start_at_the_focal_prior() -> None:
    seg_head, logits = semantic_layers(16, 8, 5, "BN")
    assert logits.out_channels == 5 and seg_head[1][0].in_channels == 8
    assert torch.allclose(logits.bias, torch.full((5,), -math.log(99.0)))
