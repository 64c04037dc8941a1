"""DLA-34 (Yu et al., "Deep Layer Aggregation") + FPN: the backbone of the real-time BlendMask.

Written from the reference checkpoint's layout: ``base_layer`` (7x7 conv, stride 1) and
``level0``/``level1`` are plain conv+norm+ReLU stacks; ``level2``-``level5`` are aggregation
trees of basic residual blocks, each halving the resolution, whose ``root`` 1x1 conv fuses the
children's outputs. Feature ``level<i>`` has stride 2**i, so FPN over level3-level5 names its
convs ``fpn_lateral3..5`` like the ResNet models.
"""

from __future__ import annotations

import math

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone
from torch import Tensor, nn

from orchestrator.models.top_levels import fcos_top_block

__all__ = ["DLA", "build_dla", "build_fcos_dla_fpn_backbone"]

# name -> (blocks per level, channels per level); every published DLA model here uses these.
DLA_SPECS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "DLA34": ((1, 1, 1, 2, 2, 1), (16, 32, 64, 128, 256, 512)),
}


class BasicBlock(nn.Module):
    """Two 3x3 conv+norm with a residual; the tree may hand in a projected residual."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                               bias=False)
        self.bn1 = get_norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = get_norm(norm, out_channels)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        shortcut = x if residual is None else residual
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + shortcut)


class Root(nn.Module):
    """Aggregation node: 1x1 conv over the concatenated children, norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = get_norm(norm, out_channels)

    def forward(self, *children: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(torch.cat(children, dim=1))))


class Tree(nn.Module):
    """A hierarchical aggregation tree of ``depth`` levels (depth 1 = two blocks and a root).

    ``level_root`` trees also feed their (downsampled) input to the root; ``extra_root``
    counts the channels of the ancestors' outputs that a nested second subtree's root receives.
    """

    def __init__(self, depth: int, in_channels: int, out_channels: int, *, stride: int,
                 norm: str, level_root: bool = False, extra_root: int = 0) -> None:
        super().__init__()
        root_channels = extra_root or 2 * out_channels
        if level_root:
            root_channels += in_channels
        self.depth = depth
        self.level_root = level_root
        self.tree1: nn.Module
        self.tree2: nn.Module
        if depth == 1:
            self.tree1 = BasicBlock(in_channels, out_channels, stride, norm)
            self.tree2 = BasicBlock(out_channels, out_channels, 1, norm)
            self.root = Root(root_channels, out_channels, norm)
        else:
            self.tree1 = Tree(depth - 1, in_channels, out_channels, stride=stride, norm=norm)
            self.tree2 = Tree(depth - 1, out_channels, out_channels, stride=1, norm=norm,
                              extra_root=root_channels + out_channels)
        self.downsample = nn.MaxPool2d(stride, stride=stride) if stride > 1 else None
        self.project = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      get_norm(norm, out_channels))
                        if in_channels != out_channels else None)

    def forward(self, x: Tensor, residual: Tensor | None = None,
                children: list[Tensor] | None = None) -> Tensor:
        if self.training and residual is not None:
            # A nested tree computes its own residual; keep the parent's projection in the
            # graph (with zero weight) so DDP sees every parameter used.
            x = x + residual.sum() * 0.0
        children = [] if children is None else children
        bottom = self.downsample(x) if self.downsample is not None else x
        shortcut = self.project(bottom) if self.project is not None else bottom
        if self.level_root:
            children.append(bottom)
        x1 = self.tree1(x, shortcut)
        if self.depth == 1:
            return self.root(self.tree2(x1), x1, *children)
        children.append(x1)
        return self.tree2(x1, children=children)


def _conv_level(in_channels: int, out_channels: int, num_convs: int, stride: int,
                norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, 3, stride=stride if i == 0 else 1,
                             padding=1, bias=False),
                   get_norm(norm, out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


class DLA(Backbone):
    """DLA feature extractor; outputs ``level0``..``level5`` (strides 1..32)."""

    def __init__(self, blocks: tuple[int, ...], channels: tuple[int, ...], norm: str) -> None:
        super().__init__()
        self.base_layer = nn.Sequential(
            nn.Conv2d(3, channels[0], 7, padding=3, bias=False), get_norm(norm, channels[0]),
            nn.ReLU(inplace=True))
        self.level0 = _conv_level(channels[0], channels[0], blocks[0], 1, norm)
        self.level1 = _conv_level(channels[0], channels[1], blocks[1], 2, norm)
        for i in range(2, 6):
            self.add_module(f"level{i}", Tree(blocks[i], channels[i - 1], channels[i], stride=2,
                                              norm=norm, level_root=i > 2))
        self._out_features = [f"level{i}" for i in range(6)]
        self._out_feature_channels = {f"level{i}": c for i, c in enumerate(channels)}
        self._out_feature_strides = {f"level{i}": 2**i for i in range(6)}
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He init over fan-out, as the DLA paper
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.base_layer(x)
        outputs = {}
        for name in self._out_features:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs


def build_dla(cfg: CfgNode) -> DLA:
    """The DLA named by MODEL.DLA.CONV_BODY, normalised by MODEL.DLA.NORM."""
    body = cfg.MODEL.DLA.CONV_BODY
    if body not in DLA_SPECS:
        raise ValueError(f"MODEL.DLA.CONV_BODY: '{body}' is not available "
                         f"(have: {', '.join(DLA_SPECS)})")
    if cfg.MODEL.BACKBONE.FREEZE_AT != -1:
        raise ValueError("MODEL.BACKBONE.FREEZE_AT must be -1 with DLA (freezing DLA stages is "
                         f"not supported), got {cfg.MODEL.BACKBONE.FREEZE_AT}")
    blocks, channels = DLA_SPECS[body]
    return DLA(blocks, channels, cfg.MODEL.DLA.NORM)


@BACKBONE_REGISTRY.register()
def build_fcos_dla_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """DLA + FPN over MODEL.FPN.IN_FEATURES (e.g. level3-level5) + the FCOS top levels."""
    if input_shape.channels != 3:
        raise ValueError(f"DLA takes 3-channel images, got {input_shape.channels}")
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(bottom_up=build_dla(cfg), in_features=cfg.MODEL.FPN.IN_FEATURES,
               out_channels=out_channels, norm=cfg.MODEL.FPN.NORM,
               top_block=fcos_top_block(cfg, out_channels), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)
