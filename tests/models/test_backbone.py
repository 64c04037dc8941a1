"""The ResNet builder: detectron2's network when nothing is deformable, DEFORM_INTERVAL, and
the FCOS backbone of the published dcn models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import build_resnet_backbone

from orchestrator.models.backbone import build_deformable_resnet_backbone, deformable_blocks
from orchestrator.models.deform import DeformBasicBlock, DeformBottleneckBlock
from tests.conftest import REPO
from tests.models.helpers import DEMO_CONFIGS, build, make_cfg, tiny_input

# The project's shared/ folder sits next to the checkout; ORCHESTRATOR_SHARED points elsewhere.
STATE_DICTS = (Path(os.environ.get("ORCHESTRATOR_SHARED", REPO.parent / "shared"))
               / "data" / "adelaidet_state_dicts")
RGB = ShapeSpec(channels=3)


def _cfg(depth: int = 50, stages: tuple[bool, ...] = (False, True, True, True),
         interval: int = 1, modulated: bool = True) -> CfgNode:
    cfg = make_cfg("blendmask", REPO / "configs/blendmask/R_50_1x.yaml")
    res = cfg.MODEL.RESNETS
    res.DEPTH, res.DEFORM_ON_PER_STAGE = depth, list(stages)
    res.DEFORM_INTERVAL, res.DEFORM_MODULATED = interval, modulated
    return cfg


def _deformable_names(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, DeformBottleneckBlock | DeformBasicBlock)]


def test_interval_3_on_r50_makes_every_third_block_deformable() -> None:
    cfg = _cfg(interval=3)
    assert cfg.MODEL.RESNETS.DEFORM_INTERVAL == 3
    model = build_deformable_resnet_backbone(cfg, RGB)
    assert _deformable_names(model) == ["res3.0", "res3.3", "res4.0", "res4.3", "res5.0"]
    offsets = [k for k in model.state_dict() if "conv2_offset.weight" in k]
    assert offsets == [f"{name}.conv2_offset.weight"
                       for name in ("res3.0", "res3.3", "res4.0", "res4.3", "res5.0")]
    assert model.state_dict()["res4.3.conv2_offset.weight"].shape == (27, 256, 3, 3)


def test_interval_1_is_detectron2s_every_block_of_a_flagged_stage() -> None:
    assert _cfg().MODEL.RESNETS.DEFORM_INTERVAL == 1  # the default
    flags = deformable_blocks(_cfg(depth=101, stages=(False, False, True, True)))
    assert flags == [[False] * 3, [False] * 4, [True] * 23, [True] * 3]
    r101 = deformable_blocks(_cfg(depth=101, interval=3))
    assert [i for i, on in enumerate(r101[2]) if on] == [0, 3, 6, 9, 12, 15, 18, 21]
    assert deformable_blocks(_cfg(interval=3), interval=1)[1] == [True] * 4  # BiFPN's rule


def test_without_deformable_blocks_it_is_detectron2s_resnet() -> None:
    """Same modules, names and init order: equal tensors from the same seed."""
    cfg = _cfg(stages=(False, False, False, False), interval=3)
    torch.manual_seed(0)
    ours = build_deformable_resnet_backbone(cfg, RGB).state_dict()
    torch.manual_seed(0)
    theirs = build_resnet_backbone(cfg, RGB).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_frozen_stages_stay_frozen_with_deformable_blocks() -> None:
    cfg = _cfg(stages=(True, True, False, False))
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    model = build_deformable_resnet_backbone(cfg, RGB)
    assert not any(p.requires_grad for p in model.res2.parameters())
    assert all(p.requires_grad for p in model.res3.parameters())


def test_bad_interval_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="DEFORM_INTERVAL must be an integer >= 1, got 0"):
        build_deformable_resnet_backbone(_cfg(interval=0), RGB)


def test_registered_and_used_by_the_fcos_backbone() -> None:
    assert BACKBONE_REGISTRY.get("build_deformable_resnet_backbone")
    cfg = make_cfg("blendmask", DEMO_CONFIGS["blendmask"], num_classes=3)
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, True, True]
    cfg.MODEL.RESNETS.DEFORM_MODULATED = True
    backbone = build(cfg).backbone
    assert isinstance(backbone, torch.nn.Module)
    names = _deformable_names(backbone)
    assert names == ["bottom_up.res4.0", "bottom_up.res4.1", "bottom_up.res5.0",
                     "bottom_up.res5.1"]
    features = backbone(torch.randn(1, 3, 64, 64))
    assert features["p3"].shape == (1, 128, 8, 8)


def test_published_dcn_blendmask_has_the_reference_state_dict() -> None:
    """BlendMask R_101_dcni3_5x: the reference checkpoint's entries, shapes and size."""
    path = STATE_DICTS / "BlendMask__R_101_dcni3_5x.json"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    reference = json.loads(path.read_text(encoding="utf-8"))
    model = build(make_cfg("blendmask", REPO / "configs/blendmask/R_101_dcni3_5x.yaml"))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == reference["state_dict"]
    assert len(ours) == reference["num_state_dict_entries"]
    assert sum(p.numel() for p in model.parameters()) == reference["num_params"]


def test_deformable_demo_model_trains_its_offsets() -> None:
    """The CPU demo with deformable res4/res5: losses finite, offset convs leave zero."""
    model = build(make_cfg("blendmask", REPO / "configs/blendmask/blendmask_R_18_dcn_demo.yaml",
                           num_classes=4)).train()
    names = _deformable_names(model)
    assert names == [f"backbone.bottom_up.res{s}.{i}" for s in (4, 5) for i in (0, 1)]
    offset = model.backbone.bottom_up.res5[1].conv2_offset.weight
    assert not offset.any()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = [tiny_input(with_sem=True), tiny_input(with_sem=True)]
    for _ in range(2):
        losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert offset.any()
