"""Per-architecture detectron2 configuration: extra config keys and class-count/threshold keys.

BlendMask and CondInst register here with their ``add_*_config`` functions; Mask R-CNN is
detectron2's own ``GeneralizedRCNN`` and needs no extra keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from detectron2.config import CfgNode

__all__ = ["ArchSupport", "ARCHS", "get_arch"]


@dataclass(frozen=True, kw_only=True)
class ArchSupport:
    """What the worker needs to know to configure one architecture family."""

    add_config: Callable[[CfgNode], None] | None
    num_classes_keys: tuple[str, ...]
    score_thresh_keys: tuple[str, ...]


ARCHS: dict[str, ArchSupport] = {
    "mask_rcnn": ArchSupport(
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
