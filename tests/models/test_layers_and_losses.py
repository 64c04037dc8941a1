"""Small pieces against closed-form values: aligned_bilinear, locations and the losses."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.models.layers import aligned_bilinear, compute_locations
from orchestrator.models.losses import (
    centerness_targets,
    dice_loss,
    giou_loss,
    sigmoid_focal_loss,
)

# FACTS section 5: arange(12).reshape(1, 1, 4, 3) upsampled by 2.
ALIGNED_X2 = [
    [0.0, 0.0, 0.5, 1.0, 1.5, 2.0],
    [0.0, 0.0, 0.5, 1.0, 1.5, 2.0],
    [1.5, 1.5, 2.0, 2.5, 3.0, 3.5],
    [3.0, 3.0, 3.5, 4.0, 4.5, 5.0],
    [4.5, 4.5, 5.0, 5.5, 6.0, 6.5],
    [6.0, 6.0, 6.5, 7.0, 7.5, 8.0],
    [7.5, 7.5, 8.0, 8.5, 9.0, 9.5],
    [9.0, 9.0, 9.5, 10.0, 10.5, 11.0],
]


def test_aligned_bilinear_matches_the_reference_vector_bit_for_bit() -> None:
    x = torch.arange(12, dtype=torch.float32).reshape(1, 1, 4, 3)
    out = aligned_bilinear(x, 2)
    assert out.shape == (1, 1, 8, 6)
    assert torch.equal(out[0, 0], torch.tensor(ALIGNED_X2))


def test_aligned_bilinear_factor_one_is_identity_and_bad_factors_fail() -> None:
    x = torch.rand(2, 3, 5, 4)
    assert aligned_bilinear(x, 1) is x
    assert aligned_bilinear(x, 4).shape == (2, 3, 20, 16)
    with pytest.raises(ValueError):
        aligned_bilinear(x, 0)


def test_locations_are_cell_centres_x_then_y() -> None:
    locs = compute_locations(2, 3, 8, torch.device("cpu"))
    assert locs.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_focal_loss_closed_form() -> None:
    logits = torch.zeros(2, 1)  # p = 0.5: ce = ln 2, (1 - p_t)^2 = 1/4
    targets = torch.tensor([[1.0], [0.0]])
    expected = 0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_dice_loss_closed_form() -> None:
    probs = torch.tensor([[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 0.0, 0.0]])
    targets = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
    loss = dice_loss(probs, targets)
    assert loss[0].item() == pytest.approx(1 - 2 * 1.0 / (1.0 + 2 + 1e-5), rel=1e-6)
    assert loss[1].item() == pytest.approx(1 - 4 / (4 + 1e-5), abs=1e-6)


def test_centerness_values() -> None:
    ctr = centerness_targets(torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]]))
    assert ctr.tolist() == pytest.approx([math.sqrt(1 / 3 * 2 / 4), 1.0])
    assert centerness_targets(torch.zeros(0, 4)).shape == (0,)


def test_giou_loss_closed_form_with_reference_smoothing() -> None:
    target = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    assert giou_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    # inside the target: intersection 4, union 16, enclosing box = union -> 1 - (4+1)/(16+1)
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert giou_loss(pred, target).item() == pytest.approx(12 / 17, rel=1e-5)
    assert giou_loss(pred, target, torch.tensor([0.5])).item() == pytest.approx(6 / 17, rel=1e-5)
