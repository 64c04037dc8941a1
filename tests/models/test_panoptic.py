"""Panoptic BlendMask: stuff maps in the mapper, loss_sem_seg, bounded panoptic inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Instances
from PIL import Image
from torch import nn

from orchestrator.models.blendmask import BlendMask
from orchestrator.models.mapper import DatasetMapperWithBasis
from orchestrator.models.panoptic import PanopticCombine, combine_panoptic, semantic_labels
from tests.models.helpers import DEMO_CONFIGS, make_cfg

STUFF = 3  # stuff classes 1..3; 0 = things


def panoptic_cfg(**overrides: Any) -> CfgNode:
    """The R-18 demo BlendMask with a small semantic head (P2-P5, as the Panoptic configs)."""
    cfg = make_cfg("blendmask", DEMO_CONFIGS["blendmask"], num_classes=2)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = STUFF + 1
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    cfg.MODEL.PANOPTIC_FPN.COMBINE.ENABLED = True
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


def write_record(root: Path, index: int, size: tuple[int, int] = (48, 64)) -> dict[str, Any]:
    """An image with one square thing (class 1) on three stuff bands, its PNG stuff map (255 on
    a void strip) and its detectron2 record."""
    h, w = size
    image = np.zeros((h, w, 3), dtype=np.uint8)
    stuff = np.zeros((h, w), dtype=np.uint8)
    for label, (color, rows) in enumerate([((200, 40, 40), slice(0, h // 3)),
                                           ((40, 200, 40), slice(h // 3, 2 * h // 3)),
                                           ((40, 40, 200), slice(2 * h // 3, h))], start=1):
        image[rows] = color
        stuff[rows] = label
    x0, y0 = 8 + 4 * index, 10
    image[y0:y0 + 20, x0:x0 + 20] = (250, 250, 250)
    stuff[y0:y0 + 20, x0:x0 + 20] = 0
    stuff[:, -4:] = 255
    Image.fromarray(image).save(root / f"img{index}.png")
    Image.fromarray(stuff).save(root / f"stuff{index}.png")
    square = [[x0, y0, x0 + 20, y0, x0 + 20, y0 + 20, x0, y0 + 20]]
    return {"file_name": str(root / f"img{index}.png"), "image_id": index, "height": h,
            "width": w, "sem_seg_file_name": str(root / f"stuff{index}.png"),
            "annotations": [{"category_id": 1, "bbox": [x0, y0, 20, 20], "bbox_mode": 1,
                             "segmentation": square, "iscrowd": 0}]}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("panoptic")
    return [write_record(root, i) for i in range(2)]


def test_mapper_transforms_the_stuff_map_with_the_image(records: list[dict[str, Any]]) -> None:
    cfg = panoptic_cfg(**{"INPUT.RANDOM_FLIP": "horizontal", "INPUT.MIN_SIZE_TRAIN": (96,),
                          "INPUT.MAX_SIZE_TRAIN": 200})
    mapper = DatasetMapperWithBasis(cfg, is_train=True)
    flips = set()
    for _ in range(12):  # both flip outcomes, with probability 1 - 2**-11
        out = mapper(dict(records[0]))
        image, sem = out["image"], out["sem_seg"]
        assert sem.dtype == torch.int64 and sem.shape == image.shape[1:] == (96, 128)
        assert set(sem.unique().tolist()) == {0, 1, 2, 3, 255}
        void = (sem == 255).any(dim=0)
        flips.add(bool(void[0]))
        assert void.sum() == 8 and (void[:8].all() or void[-8:].all())  # 4 px strip, x2
        white = (image == 250).all(dim=0)  # the thing, in the image, is class 0 in the map
        assert white.sum() > 1000 and (sem[white] == 0).all()
        assert "basis_sem" in out and len(out["instances"]) == 1
    assert flips == {True, False}


def test_mapper_names_the_image_without_a_stuff_map(records: list[dict[str, Any]]) -> None:
    mapper = DatasetMapperWithBasis(panoptic_cfg(), is_train=True)
    record = {k: v for k, v in records[0].items() if k != "sem_seg_file_name"}
    with pytest.raises(ValueError, match="img0.png.*sem_seg_file_name"):
        mapper(record)
    plain = DatasetMapperWithBasis(panoptic_cfg(**{"MODEL.PANOPTIC_FPN.COMBINE.ENABLED": False}))
    assert "sem_seg" not in plain(record)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(panoptic_cfg(**{  # untrained: keep every candidate and stuff region
        "MODEL.FCOS.INFERENCE_TH_TEST": 0.0, "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT": 0,
        "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH": 0.0}))


def _batch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    mapper = DatasetMapperWithBasis(panoptic_cfg(**{"INPUT.RANDOM_FLIP": "none"}))
    return [mapper(dict(r)) for r in records]


def test_a_training_step_adds_loss_sem_seg(model: BlendMask,
                                           records: list[dict[str, Any]]) -> None:
    model.train()
    losses = model(_batch(records))
    assert set(losses) == {"loss_basis_sem", "loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr",
                           "loss_mask", "loss_sem_seg"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.zero_grad()
    losses["loss_sem_seg"].backward()
    assert model.panoptic_module is not None
    head = model.panoptic_module.get_parameter("predictor.weight").grad
    assert head is not None and head.abs().sum() > 0
    fpn = model.backbone.get_parameter("fpn_output2.weight").grad
    assert fpn is not None  # the loss reaches the features


def test_the_whole_model_learns_the_stuff_maps(records: list[dict[str, Any]]) -> None:
    """30 training steps (all losses) on one batch of two real images and stuff PNGs:
    loss_sem_seg falls (about 5 s on a quiet 2-core machine)."""
    torch.manual_seed(0)
    model = build_model(panoptic_cfg())
    batch = _batch(records)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    seen = []
    for _ in range(30):
        losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values())
        seen.append(losses["loss_sem_seg"].item())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert seen[-1] < 0.5 * seen[0], seen


def test_training_without_sem_seg_is_an_error(model: BlendMask,
                                              records: list[dict[str, Any]]) -> None:
    data = DatasetMapperWithBasis(panoptic_cfg())(dict(records[0]))
    del data["sem_seg"]
    model.train()
    with pytest.raises(ValueError, match="'sem_seg'"):
        model([data])


def test_inference_returns_panoptic_seg_and_labels(model: BlendMask,
                                                   records: list[dict[str, Any]]) -> None:
    image = torch.as_tensor(np.array(Image.open(records[0]["file_name"])).transpose(2, 0, 1))
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": image.clone(), "height": 96, "width": 120}])
    assert "sem_seg" not in out and len(out["instances"]) > 0
    ids, segments = out["panoptic_seg"]
    labels = out["sem_seg_labels"]
    assert ids.dtype == torch.int32 and ids.shape == (96, 120)
    assert labels.dtype == torch.uint8 and labels.shape == (96, 120)
    assert int(labels.max()) <= STUFF
    assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
    assert {s["isthing"] for s in segments} == {True, False}
    assert set(ids.unique().tolist()) <= {0, *(s["id"] for s in segments)}
    for s in segments:
        assert s["area"] == int((ids == s["id"]).sum()) > 0
        if s["isthing"]:
            assert 0 <= s["category_id"] < 2 and isinstance(s["score"], float)
        else:
            assert 1 <= s["category_id"] <= STUFF
            assert (labels[ids == s["id"]] == s["category_id"]).all()


def assert_labels_equal(logits: torch.Tensor, size: tuple[int, int], out: tuple[int, int],
                        budgets: tuple[int, ...]) -> None:
    expected = sem_seg_postprocess(logits, size, *out).argmax(dim=0)
    for chunk_bytes in budgets:
        labels = semantic_labels(logits, size, out, chunk_bytes=chunk_bytes)
        assert labels.dtype == torch.uint8 and torch.equal(labels.long(), expected)


@pytest.mark.parametrize("seed", range(12))
def test_semantic_labels_equal_the_argmax_of_sem_seg_postprocess(seed: int) -> None:
    """Small planes, 2 to 40 classes, budgets of one class up to all; even seeds have
    integer logits, so exact ties between classes are common."""
    g = torch.Generator().manual_seed(seed)
    classes = int(torch.randint(2, 41, (1,), generator=g))
    padded = [int(v) for v in torch.randint(4, 48, (2,), generator=g)]
    size = (int(torch.randint(1, padded[0] + 1, (1,), generator=g)),
            int(torch.randint(1, padded[1] + 1, (1,), generator=g)))
    out = (int(torch.randint(1, 160, (1,), generator=g)), int(torch.randint(1, 160, (1,),
                                                                             generator=g)))
    logits = torch.randn(classes, *padded, generator=g)
    if seed % 2 == 0:
        logits = (2 * logits).round()
    assert_labels_equal(logits, size, out, (1, out[0] * out[1] * 4 * 9, 2**30))


def test_semantic_labels_on_a_large_plane_one_class_at_a_time() -> None:
    """Over 1 Mpx a chunk may hold a single class (the budget rules)."""
    g = torch.Generator().manual_seed(0)
    logits = (2 * torch.randn(6, 64, 48, generator=g)).round()
    assert_labels_equal(logits, (60, 45), (1100, 1000), (1, 1100 * 1000 * 4 * 4))


def test_semantic_labels_break_ties_to_the_first_class() -> None:
    logits = torch.zeros(5, 8, 8)
    logits[3, :4] = 1.0
    logits[4, :4] = 1.0
    labels = semantic_labels(logits, (8, 8), (16, 16), chunk_bytes=1)
    assert (labels[:6] == 3).all() and (labels[10:] == 0).all()


def random_instances(g: torch.Generator, n: int, size: tuple[int, int]) -> Instances:
    inst = Instances(size)
    inst.scores = torch.rand(n, generator=g)
    inst.pred_classes = torch.randint(0, 3, (n,), generator=g)
    corners = torch.randint(0, min(size), (n, 2), generator=g)
    masks = torch.zeros((n, *size), dtype=torch.bool)
    for i, (y, x) in enumerate(corners.tolist()):
        masks[i, y:y + size[0] // 2, x:x + size[1] // 3] = True
    inst.pred_masks = masks
    return inst


@pytest.mark.parametrize("seed", range(6))
def test_combine_matches_detectron2(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    size = (40, 52)
    inst = random_instances(g, 12, size)
    labels = torch.randint(0, 5, (size[0] // 8, size[1] // 4), generator=g, dtype=torch.uint8)
    labels = labels.repeat_interleave(8, 0).repeat_interleave(4, 1)
    args = {"overlap_threshold": 0.5, "stuff_area_limit": 64, "instances_score_thresh": 0.3}
    ids, segments = combine_panoptic(inst, labels, **args)
    ref_ids, ref_segments = combine_semantic_and_instance_outputs(inst, labels, *args.values())
    assert torch.equal(ids, ref_ids) and len(segments) == len(ref_segments) > 3
    for ours, theirs in zip(segments, ref_segments, strict=True):
        assert ours["area"] == int((ids == ours["id"]).sum())
        assert {k: v for k, v in ours.items() if k != "area" or not ours["isthing"]} == theirs


@pytest.mark.parametrize(("threshold", "kept"), [(0.45, False), (0.3, True)])
def test_the_configured_confidence_threshold_is_used(threshold: float, kept: bool) -> None:
    cfg = panoptic_cfg(**{"MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH": threshold,
                          "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT": 0})
    inst = Instances((8, 8))
    inst.scores = torch.tensor([0.4])
    inst.pred_classes = torch.tensor([1])
    inst.pred_masks = torch.zeros((1, 8, 8), dtype=torch.bool)
    inst.pred_masks[0, :4] = True
    logits = torch.zeros(STUFF + 1, 8, 8)
    logits[2] = 1.0  # stuff class 2 everywhere
    out = PanopticCombine.from_config(cfg)(inst, logits, (8, 8))
    ids, segments = out["panoptic_seg"]
    assert [s["isthing"] for s in segments] == ([True, False] if kept else [False])
    assert int((ids == segments[-1]["id"]).sum()) == (32 if kept else 64)
