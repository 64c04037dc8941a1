"""The FPN levels above P5 of the FCOS-based models (MODEL.FCOS.TOP_LEVELS).

The reference computes them from the FPN *output* P5 with convs: 2 levels are P6 and P7
(detectron2's ``LastLevelP6P7``), 1 level is P6 alone (the 550 px BlendMask), 0 is none.
"""

from __future__ import annotations

import fvcore.nn.weight_init as weight_init
from detectron2.config import CfgNode
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from torch import Tensor, nn

__all__ = ["LastLevelP6", "fcos_top_block"]


class LastLevelP6(nn.Module):
    """P6 = 3x3 stride-2 conv on P5 (checkpoint key ``top_block.p6``)."""

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "p5") -> None:
        super().__init__()
        self.num_levels = 1  # read by detectron2's FPN
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        weight_init.c2_xavier_fill(self.p6)

    def forward(self, p5: Tensor) -> list[Tensor]:
        return [self.p6(p5)]


def fcos_top_block(cfg: CfgNode, out_channels: int) -> nn.Module | None:
    """The FPN ``top_block`` for MODEL.FCOS.TOP_LEVELS (0, 1 or 2), read from P5."""
    levels = cfg.MODEL.FCOS.TOP_LEVELS
    if levels == 2:
        return LastLevelP6P7(out_channels, out_channels, in_feature="p5")
    if levels == 1:
        return LastLevelP6(out_channels, out_channels, in_feature="p5")
    if levels == 0:
        return None
    raise ValueError(f"MODEL.FCOS.TOP_LEVELS must be 0, 1 or 2, got {levels}")
