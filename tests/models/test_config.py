"""Config functions, registrations and the shipped yaml files."""

from __future__ import annotations

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY

from orchestrator.models.arch import get_arch
from tests.conftest import REPO
from tests.models.helpers import make_cfg

FCOS_BACKBONES = ("build_fcos_resnet_fpn_backbone", "build_fcos_resnet_bifpn_backbone",
                  "build_fcos_dla_fpn_backbone")


def test_models_are_registered_by_importing_arch() -> None:
    assert META_ARCH_REGISTRY.get("CondInst") and META_ARCH_REGISTRY.get("BlendMask")
    assert PROPOSAL_GENERATOR_REGISTRY.get("FCOS")
    for name in FCOS_BACKBONES:
        assert BACKBONE_REGISTRY.get(name)


@pytest.mark.parametrize("arch", ["blendmask", "condinst"])
def test_add_config_touches_only_the_cfg_given(arch: str) -> None:
    cfg = get_cfg()
    add = get_arch(arch).add_config
    assert add is not None
    add(cfg)
    assert cfg.MODEL.FCOS.NUM_CLASSES == 80 and cfg.MODEL.FCOS.SIZES_OF_INTEREST == [64, 128,
                                                                                   256, 512]
    assert "FCOS" not in get_cfg().MODEL


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("[bc]*/**/*.yaml")),
                         ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_file_merges(path) -> None:  # type: ignore[no-untyped-def]
    arch = path.relative_to(REPO / "configs").parts[0]
    cfg = make_cfg(arch, path)
    assert cfg.MODEL.META_ARCHITECTURE == {"blendmask": "BlendMask", "condinst": "CondInst"}[arch]
    assert cfg.MODEL.BACKBONE.NAME in FCOS_BACKBONES
    if "demo" in path.name:
        assert cfg.MODEL.RESNETS.NORM == "GN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
        assert cfg.DATALOADER.NUM_WORKERS == 0 and not cfg.MODEL.RESNETS.STRIDE_IN_1X1


def test_reference_defaults() -> None:
    blend = make_cfg("blendmask", REPO / "configs/blendmask/R_50_1x.yaml")
    cond = make_cfg("condinst", REPO / "configs/condinst/MS_R_50_1x.yaml")
    for cfg in (blend, cond):
        assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH) == (0.01, 16)
        assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (90000, (60000, 80000))
        assert cfg.MODEL.FCOS.THRESH_WITH_CTR and cfg.MODEL.RESNETS.NORM == "FrozenBN"
        assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert not blend.MODEL.FCOS.USE_SCALE and blend.MODEL.BASIS_MODULE.LOSS_ON
    assert cond.MODEL.FCOS.USE_SCALE and cond.MODEL.CONDINST.MAX_PROPOSALS == 500
    r101 = make_cfg("condinst", REPO / "configs/condinst/MS_R_101_3x.yaml")
    assert r101.MODEL.RESNETS.DEPTH == 101 and r101.SOLVER.MAX_ITER == 270000
