"""FCOS target assignment (centre sampling, size ranges, ties) and inference on hand-built cases."""

from __future__ import annotations

import torch
from detectron2.structures import Boxes, Instances

from orchestrator.models.fcos_outputs import (
    FCOSInferenceConfig,
    FCOSLossConfig,
    _mass_centers,
    assign_image_targets,
    fcos_inference,
    fcos_losses,
    size_ranges,
)
from orchestrator.models.layers import compute_locations

CPU = torch.device("cpu")


def _level(h: int, w: int, stride: int, soi: tuple[int, ...] = (64,)):  # type: ignore[no-untyped-def]
    locs = compute_locations(h, w, stride, CPU)
    strides = torch.full((len(locs),), float(stride))
    ranges = torch.tensor([size_ranges(soi)[0]]).repeat(len(locs), 1)
    return locs, strides, ranges


def _positives(labels: torch.Tensor, locs: torch.Tensor, num_classes: int) -> set[tuple[int, int]]:
    return {(int(x), int(y)) for x, y in locs[labels != num_classes].tolist()}


def test_size_ranges_are_closed_and_open_ended() -> None:
    assert size_ranges([64, 128]) == [(-1.0, 64.0), (64.0, 128.0), (128.0, 100000000.0)]


def test_centre_sampling_keeps_locations_strictly_inside_the_clipped_centre_box() -> None:
    locs, strides, ranges = _level(8, 8, 8)
    box = torch.tensor([[0.0, 0.0, 40.0, 40.0]])  # centre (20, 20): region (8, 32) x (8, 32)
    cfg = FCOSLossConfig(num_classes=3, sizes_of_interest=(64,))
    labels, reg, gt = assign_image_targets(locs, strides, ranges, box, torch.tensor([2]), cfg)
    assert _positives(labels, locs, 3) == {(x, y) for x in (12, 20, 28) for y in (12, 20, 28)}
    assert set(labels[labels != 3].tolist()) == {2} and set(gt[labels != 3].tolist()) == {0}
    assert set(gt[labels == 3].tolist()) == {-1}
    first = (locs[:, 0] == 12) & (locs[:, 1] == 20)
    assert reg[first].tolist() == [[12.0, 20.0, 28.0, 20.0]]

    no_sampling = FCOSLossConfig(num_classes=3, sizes_of_interest=(64,), center_sample=False)
    labels, _, _ = assign_image_targets(locs, strides, ranges, box, torch.tensor([2]),
                                        no_sampling)
    assert len(_positives(labels, locs, 3)) == 25  # every cell centre strictly inside the box


def test_centre_region_is_clipped_to_the_box_and_can_follow_the_mass_centre() -> None:
    locs, strides, ranges = _level(8, 8, 8)
    box = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    cfg = FCOSLossConfig(num_classes=1, sizes_of_interest=(64,))
    corner = torch.tensor([[2.0, 2.0]])  # region (-10, 14) clipped to (0, 14)
    labels, _, _ = assign_image_targets(locs, strides, ranges, box, torch.tensor([0]), cfg,
                                        centers=corner)
    assert _positives(labels, locs, 1) == {(4, 4), (12, 4), (4, 12), (12, 12)}
    mask = torch.zeros(1, 10, 10)
    mask[0, 2:4, 6:10] = 1  # rows 2-3, columns 6-9
    assert _mass_centers(mask).tolist() == [[7.5, 2.5]]


def test_size_range_and_smallest_area_decide_between_gts() -> None:
    locs, strides, ranges = _level(8, 8, 8, soi=(16,))
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [8.0, 8.0, 24.0, 24.0]])
    cfg = FCOSLossConfig(num_classes=2, sizes_of_interest=(16,), center_sample=False)
    labels, _, gt = assign_image_targets(locs, strides, ranges, boxes, torch.tensor([0, 1]), cfg)
    # Only the small box fits this level's range [-1, 16].
    assert _positives(labels, locs, 2) == {(12, 12), (20, 12), (12, 20), (20, 20)}
    assert set(gt[labels != 2].tolist()) == {1}
    wide = FCOSLossConfig(num_classes=2, sizes_of_interest=(64,), center_sample=False)
    _, _, gt = assign_image_targets(locs, strides, _level(8, 8, 8)[2], boxes,
                                    torch.tensor([0, 1]), wide)
    at_12_12 = (locs[:, 0] == 12) & (locs[:, 1] == 12)
    assert gt[at_12_12].item() == 1  # both qualify: the smaller box wins


def test_losses_and_positives_cover_the_batch() -> None:
    torch.manual_seed(0)
    locs = [compute_locations(8, 8, 8, CPU), compute_locations(4, 4, 16, CPU)]
    inst = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 40.0, 40.0]])),
                     gt_classes=torch.tensor([1]))
    logits = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    reg = [torch.rand(2, 4, 8, 8), torch.rand(2, 4, 4, 4)]
    ctr = [torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4)]
    cfg = FCOSLossConfig(num_classes=3, sizes_of_interest=(64,))
    result, losses = fcos_losses(logits, reg, ctr, None, locs, [8, 16], [inst, inst], cfg)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert all(torch.isfinite(v) for v in losses.values())
    pos = result.positives
    assert len(pos) == 18 and pos.im_inds.tolist() == [0] * 9 + [1] * 9
    assert pos.gt_inds.tolist() == [0] * 9 + [1] * 9  # GT indices are global over the batch
    assert result.loss_denorm.item() == pos.gt_ctrs.sum().item()


def test_inference_scores_are_sqrt_of_cls_times_ctr_and_nms_applies() -> None:
    locs = [compute_locations(2, 2, 8, CPU)]
    logits = torch.full((1, 2, 2, 2), -10.0)
    logits[0, 1, 0, 0] = logits[0, 1, 0, 1] = 0.0  # two overlapping class-1 detections
    reg = torch.full((1, 4, 2, 2), 1.0)  # l = t = r = b = 8 px
    ctr = torch.zeros(1, 1, 2, 2)
    cfg = FCOSInferenceConfig(score_thresh=0.05, thresh_with_ctr=True, nms_thresh=0.1)
    (det,) = fcos_inference([logits], [reg], [ctr], None, locs, [8], [(16, 16)], cfg)
    assert len(det) == 1 and det.pred_classes.tolist() == [1]
    assert det.scores.item() == torch.tensor(0.25).sqrt().item()
    assert det.pred_boxes.tensor.tolist() in ([[-4.0, -4.0, 12.0, 12.0]], [[4.0, -4.0, 20.0, 12.0]])


def test_shared_tower_with_per_level_batch_norm() -> None:
    """The RT "BN head": one conv tower shared by all levels, one BatchNorm per level."""
    from orchestrator.models.fcos import FCOSHead

    head = FCOSHead(in_channels=32, num_classes=3, num_levels=3, num_cls_convs=0,
                    num_box_convs=0, num_share_convs=2, norm="BN", use_scale=False)
    keys = set(head.state_dict())
    assert {"share_tower.1.2.running_mean", "share_tower.4.0.num_batches_tracked"} <= keys
    assert not any(k.startswith(("cls_tower.", "bbox_tower.")) for k in keys)
    feats = [torch.randn(2, 32, 8, 8) + level * 5 for level in range(3)]
    logits, _, _, _ = head(feats)
    norms = head.share_tower[1]
    for level, feat in enumerate(feats):  # each level's norm saw only its own level
        batch_mean = head.share_tower[0](feat).mean(dim=(0, 2, 3)).detach()
        assert torch.allclose(norms[level].running_mean, 0.1 * batch_mean, atol=1e-6)
    assert not torch.allclose(norms[0].running_mean, norms[2].running_mean)
    sum(x.sum() for x in logits).backward()
    assert head.share_tower[0].weight.grad is not None
