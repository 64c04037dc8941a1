"""CondInst pieces: the dynamic head's parameter layout, the chunked postprocess, inference."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import Instances
from torch import nn

from orchestrator.models.condinst import (
    CondInst,
    DynamicMaskHead,
    parse_dynamic_params,
    postprocess_masks,
    topk_per_gt,
)
from orchestrator.models.layers import aligned_bilinear
from tests.models.helpers import DEMO_CONFIGS, build, make_cfg, tiny_input


@pytest.fixture(scope="module")
def model() -> nn.Module:
    cfg = make_cfg("condinst", DEMO_CONFIGS["condinst"], num_classes=4)
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0  # untrained: keep every candidate
    return build(cfg)


def _head() -> DynamicMaskHead:
    return DynamicMaskHead(in_channels=8, channels=8, num_layers=3, mask_feat_stride=8,
                           mask_out_stride=4, sizes_of_interest=[64, 128, 256, 512])


def test_dynamic_head_has_169_parameters_weights_first_then_biases() -> None:
    head = _head()
    assert head.num_gen_params == 169
    assert head.sizes_of_interest.tolist() == [64, 128, 256, 512, 1024]
    params = torch.arange(2 * 169, dtype=torch.float32).reshape(2, 169)
    weights, biases = parse_dynamic_params(params, 10, 8, 3)
    assert [tuple(w.shape) for w in weights] == [(16, 10, 1, 1), (16, 8, 1, 1), (2, 8, 1, 1)]
    assert [tuple(b.shape) for b in biases] == [(16,), (16,), (2,)]
    # Instance 0, layer 1: (out, in) order; its second output row starts at offset 10.
    assert weights[0][1, :, 0, 0].tolist() == list(range(10, 20))
    assert weights[1][0, 0, 0, 0].item() == 80 and weights[2][0, 0, 0, 0].item() == 144
    assert biases[0][0].item() == 152 and biases[2][0].item() == 168
    assert biases[2][1].item() == 169 + 168  # instance 1's last bias


def test_dynamic_head_uses_relative_coordinates_of_the_instance_level() -> None:
    head = _head()
    inst = Instances((0, 0), locations=torch.tensor([[12.0, 4.0]]),
                     fpn_levels=torch.tensor([1]))
    rel = head._relative_coords(inst, 1, 2)  # pixels at (4, 4) and (12, 4)
    assert rel.tolist() == [[[8 / 128, 0.0], [0.0, 0.0]]]
    inst.im_inds = torch.tensor([0])
    inst.top_feats = torch.randn(1, 169)
    assert head(torch.randn(1, 8, 3, 5), inst).shape == (1, 1, 6, 10)


def test_chunked_postprocess_equals_the_naive_one_and_returns_bool() -> None:
    torch.manual_seed(0)
    probs = torch.rand(5, 1, 8, 6)  # stride 4 of a 32 x 24 padded input
    image_size, out = (30, 21), (61, 43)
    naive = aligned_bilinear(probs, 4)[:, :, :30, :21]
    naive = F.interpolate(naive, size=out, mode="bilinear", align_corners=False)[:, 0] > 0.5
    for budget in (1, 10**9):  # one instance per chunk, and everything at once
        masks = postprocess_masks(probs, (32, 24), image_size, out, budget)
        assert masks.dtype == torch.bool and torch.equal(masks, naive)


def test_inference_returns_instances_at_the_requested_size(model: CondInst) -> None:
    model.eval()
    with torch.no_grad():
        (out,) = model([tiny_input(out=(96, 90))])
    inst = out["instances"]
    assert inst.image_size == (96, 90) and len(inst) > 0
    for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        assert inst.has(field), field
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape[1:] == (96, 90)


def test_training_returns_the_four_losses(model: CondInst) -> None:
    model.train()
    losses = model([tiny_input(), tiny_input()])
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.controller.weight.grad is not None
    assert model.mask_head._iter.item() == 1


def _positives(gt_inds: list[int], im_inds: list[int], logits: list[float]) -> Instances:
    n = len(gt_inds)
    return Instances((0, 0), gt_inds=torch.tensor(gt_inds), im_inds=torch.tensor(im_inds),
                     logits_pred=torch.tensor(logits)[:, None], ctrness_pred=torch.zeros(n))


def test_topk_per_image_splits_k_over_the_gts_that_have_positives() -> None:
    # Image 0 has GTs 0, 1, 2 but GT 2 has no positive location: k=4 gives 4 // 2 = 2 per GT.
    # Image 1 has one GT (3) with three positives: it keeps min(4 // 1, 3) = 3.
    pos = _positives(gt_inds=[0, 0, 0, 1, 1, 1, 3, 3, 3],
                     im_inds=[0, 0, 0, 0, 0, 0, 1, 1, 1],
                     logits=[0.0, 3.0, 1.0, 2.0, -1.0, 5.0, 1.0, 2.0, 3.0])
    assert topk_per_gt(pos, 4).tolist() == [1, 2, 5, 3, 8, 7, 6]
    # k smaller than the number of GTs: still one per GT (max(floor(k / n), 1)).
    assert topk_per_gt(pos, 1).tolist() == [1, 5, 8]
    assert topk_per_gt(pos[[]], 4).tolist() == []


def test_proposal_caps(model: CondInst) -> None:
    pos = _positives(gt_inds=[0, 0, 0, 1, 1], im_inds=[0] * 5, logits=[0.0, 3.0, 1.0, 2.0, -1.0])
    model.max_proposals, model.topk_proposals_per_im = 2, -1
    kept = model._select_positives(pos)
    assert len(kept) == 2 and len(set(kept.logits_pred[:, 0].tolist())) == 2
    model.max_proposals = 5
    assert len(model._select_positives(pos)) == 5
    model.max_proposals, model.topk_proposals_per_im = -1, 2
    kept = model._select_positives(pos)
    assert kept.logits_pred[:, 0].tolist() == [3.0, 2.0]  # best one per GT (2 // 2 GTs)
    model.max_proposals, model.topk_proposals_per_im = -1, -1
    assert len(model._select_positives(pos)) == 5


@pytest.mark.parametrize(("key", "value", "message"), [
    ("MAX_PROPOSALS", 0, "MAX_PROPOSALS must be -1 .* got 0"),
    ("TOPK_PROPOSALS_PER_IM", -3, "TOPK_PROPOSALS_PER_IM must be -1 .* got -3"),
])
def test_proposal_caps_reject_values_that_train_nothing(key: str, value: int,
                                                         message: str) -> None:
    cfg = make_cfg("condinst", DEMO_CONFIGS["condinst"], num_classes=4)
    cfg.MODEL.CONDINST[key] = value
    with pytest.raises(ValueError, match=message):
        build(cfg)
    cfg.MODEL.CONDINST.MAX_PROPOSALS, cfg.MODEL.CONDINST.TOPK_PROPOSALS_PER_IM = 10, 10
    with pytest.raises(ValueError, match="cannot both be on"):
        build(cfg)


def test_disable_rel_coords_drops_the_coordinate_channels() -> None:
    cfg = make_cfg("condinst", DEMO_CONFIGS["condinst"], num_classes=4)
    cfg.MODEL.CONDINST.MASK_HEAD.DISABLE_REL_COORDS = True
    model = build(cfg)
    assert model.mask_head.num_inputs == 8 and model.mask_head.num_gen_params == 153
    assert model.controller.weight.shape[0] == 153
    weights, _ = parse_dynamic_params(torch.zeros(1, 153), 8, 8, 3)
    assert weights[0].shape == (8, 8, 1, 1)
    # Without coordinates, the same parameters give the same mask wherever the instance is.
    inst = Instances((0, 0), locations=torch.tensor([[4.0, 4.0], [60.0, 36.0]]),
                     fpn_levels=torch.tensor([0, 2]), im_inds=torch.tensor([0, 0]),
                     top_feats=torch.randn(1, 153).repeat(2, 1))
    logits = model.mask_head(torch.randn(1, 8, 6, 7), inst)
    assert logits.shape[:2] == (2, 1) and torch.equal(logits[0], logits[1])
    with_coords = _head()
    inst.top_feats = torch.randn(1, 169).repeat(2, 1)
    logits = with_coords(torch.randn(1, 8, 6, 7), inst)
    assert not torch.equal(logits[0], logits[1])


def test_images_without_objects_or_detections(model: CondInst) -> None:
    model.train()
    empty = tiny_input()
    empty["instances"] = empty["instances"][[]]
    losses = model([empty, empty])
    assert losses["loss_mask"].item() == 0 and torch.isfinite(losses["loss_fcos_cls"])
    model.eval()
    fcos = model.proposal_generator
    strict, fcos.test_cfg = fcos.test_cfg, replace(fcos.test_cfg, score_thresh=1.0)
    try:
        with torch.no_grad():
            (out,) = model([tiny_input(out=(96, 90))])
    finally:
        fcos.test_cfg = strict
    assert len(out["instances"]) == 0 and out["instances"].pred_masks.shape == (0, 96, 90)
