"""Per-architecture detectron2 configuration: extra config keys and class-count/threshold keys.

BlendMask and CondInst register here with their ``add_*_config`` functions; Mask R-CNN is
detectron2's own ``GeneralizedRCNN`` and needs no extra keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from detectron2.config import CfgNode

__all__ = ["ArchSupport", "ARCHS", "get_arch", "arch_for_cfg"]


@dataclass(frozen=True, kw_only=True)
class ArchSupport:
    """What the worker needs to know to configure one architecture family."""

    meta_architecture: str
    add_config: Callable[[CfgNode], None] | None
    num_classes_keys: tuple[str, ...]
    score_thresh_keys: tuple[str, ...]
    # Builds the training DatasetMapper (e.g. BlendMask's basis_sem targets); None = detectron2's.
    train_mapper: Callable[[CfgNode], Any] | None = None


ARCHS: dict[str, ArchSupport] = {
    "mask_rcnn": ArchSupport(
        meta_architecture="GeneralizedRCNN",
        add_config=None,
        num_classes_keys=("MODEL.ROI_HEADS.NUM_CLASSES",),
        score_thresh_keys=("MODEL.ROI_HEADS.SCORE_THRESH_TEST",),
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
