"""Per-architecture detectron2 configuration: extra config keys and class-count/threshold keys.

BlendMask and CondInst register here with their ``add_*_config`` functions; Mask R-CNN is
detectron2's own ``GeneralizedRCNN`` and needs no extra keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from detectron2.config import CfgNode

# Importing the model modules registers FCOS, CondInst, BlendMask and the FCOS backbones with
# detectron2's registries; this module is only imported by code that builds models.
from orchestrator.models import META_ARCHITECTURES
from orchestrator.models import backbone as _backbone  # noqa: F401
from orchestrator.models import bifpn as _bifpn  # noqa: F401
from orchestrator.models import blendmask as _blendmask  # noqa: F401
from orchestrator.models import condinst as _condinst  # noqa: F401
from orchestrator.models import dla as _dla  # noqa: F401
from orchestrator.models import fcos as _fcos  # noqa: F401
from orchestrator.models.config import add_blendmask_config, add_condinst_config
from orchestrator.models.mapper import DatasetMapperWithBasis

__all__ = ["ArchSupport", "ARCHS", "get_arch", "arch_for_cfg"]


@dataclass(frozen=True, kw_only=True)
class ArchSupport:
    """What the worker needs to know to configure one architecture family."""

    meta_architecture: str
    add_config: Callable[[CfgNode], None] | None
    num_classes_keys: tuple[str, ...]
    score_thresh_keys: tuple[str, ...]
    # Keys besides TEST.DETECTIONS_PER_IMAGE that cap detections per image (eval.max_dets).
    max_dets_keys: tuple[str, ...] = ()
    # Builds the training DatasetMapper (e.g. BlendMask's basis_sem targets); None = detectron2's.
    train_mapper: Callable[[CfgNode], Any] | None = None


ARCHS: dict[str, ArchSupport] = {
    "mask_rcnn": ArchSupport(
        meta_architecture=META_ARCHITECTURES["mask_rcnn"],
        add_config=None,
        num_classes_keys=("MODEL.ROI_HEADS.NUM_CLASSES",),
        score_thresh_keys=("MODEL.ROI_HEADS.SCORE_THRESH_TEST",),
    ),
    "blendmask": ArchSupport(
        meta_architecture=META_ARCHITECTURES["blendmask"],
        add_config=add_blendmask_config,
        num_classes_keys=("MODEL.FCOS.NUM_CLASSES", "MODEL.BASIS_MODULE.NUM_CLASSES"),
        score_thresh_keys=("MODEL.FCOS.INFERENCE_TH_TEST",),
        max_dets_keys=("MODEL.FCOS.POST_NMS_TOPK_TEST",),
        train_mapper=DatasetMapperWithBasis,
    ),
    "condinst": ArchSupport(
        meta_architecture=META_ARCHITECTURES["condinst"],
        add_config=add_condinst_config,
        num_classes_keys=("MODEL.FCOS.NUM_CLASSES",),
        score_thresh_keys=("MODEL.FCOS.INFERENCE_TH_TEST",),
        max_dets_keys=("MODEL.FCOS.POST_NMS_TOPK_TEST",),
    ),
}


def get_arch(name: str) -> ArchSupport:
    """The support entry for ``name``; a clear error for families not built yet."""
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(
            f"model.arch '{name}' is not available in this version (have: {', '.join(ARCHS)})"
        ) from None


def arch_for_cfg(cfg: CfgNode) -> ArchSupport | None:
    """The entry whose meta-architecture the cfg builds (None for models we do not know)."""
    return next((a for a in ARCHS.values()
                 if a.meta_architecture == cfg.MODEL.META_ARCHITECTURE), None)
