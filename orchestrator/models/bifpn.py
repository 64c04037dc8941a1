"""ResNet + BiFPN (Tan et al., EfficientDet): the backbone of CondInst's BiFPN models.

The checkpoint layout fixes the structure: ``bottom_up`` wraps the ResNet as
``bottom_up.backbone`` and adds ``res6``/``res7`` (1x1 reduction to the BiFPN width when the
channels differ, then a 3x3/2 max-pool); ``repeated_bifpn.<r>`` are the BiFPN layers. Each
layer fuses a top-down then a bottom-up pass of nodes; node parameters are named after the node's
level and input ids (``weights_f1_1_7_8``, ``outputs_f1_1_7_8``, ``lateral_1_f1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from torch import Tensor, nn

from orchestrator.models.backbone import build_deformable_resnet_backbone

__all__ = ["BiFPN", "BiFPNLayer", "BackboneWithTopLevels", "bifpn_nodes",
           "build_fcos_resnet_bifpn_backbone"]

Node = tuple[int, tuple[int, ...]]  # (output level, ids of the nodes it fuses)


def bifpn_nodes(num_levels: int) -> list[Node]:
    """The fusion nodes of one BiFPN layer over ``num_levels`` inputs (ids 0..n-1; node k gets
    id n+k): top-down from the second-highest level to the lowest, each fusing its level's input
    with the node above; then bottom-up, each fusing its level's input, that level's top-down
    node (not at the top level) and the node below."""
    nodes: list[Node] = []
    top_down: dict[int, int] = {}
    previous = num_levels - 1
    for level in range(num_levels - 2, -1, -1):
        nodes.append((level, (level, previous)))
        previous = top_down[level] = num_levels + len(nodes) - 1
    for level in range(1, num_levels):
        middle = (top_down[level],) if level < num_levels - 1 else ()
        nodes.append((level, (level, *middle, previous)))
        previous = num_levels + len(nodes) - 1
    return nodes


def _node_key(node: Node) -> str:
    level, inputs = node
    return f"f{level}_" + "_".join(map(str, inputs))


def _resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Max-pool (3x3/2) a finer map, or nearest-upsample a coarser one, to ``size``.

    A side of 1 stays 1 when pooled, so tiny inputs (where only one side shrinks) still work.
    """
    h, w = x.shape[-2:]
    target = (int(size[0]), int(size[1]))
    if (h, w) == target:
        return x
    if h >= target[0] and w >= target[1]:
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        if tuple(x.shape[-2:]) != target:
            raise ValueError(f"BiFPN: cannot pool {(h, w)} to {target} with stride 2")
        return x
    if h <= target[0] and w <= target[1]:
        return F.interpolate(x, size=target, mode="nearest")
    raise ValueError(f"BiFPN: feature {(h, w)} is neither finer nor coarser than {target}")


class BiFPNLayer(nn.Module):
    """One BiFPN layer: every node is a fast normalised fusion (ReLU weights / their sum),
    swish, then a 3x3 conv + norm. Inputs with another width get a 1x1 lateral conv first."""

    def __init__(self, in_channels: list[int], out_channels: int, norm: str) -> None:
        super().__init__()
        self.nodes = bifpn_nodes(len(in_channels))
        self.out_channels = out_channels
        for node in self.nodes:
            level, inputs = node
            for i in inputs:
                name = f"lateral_{i}_f{level}"
                if i < len(in_channels) and in_channels[i] != out_channels \
                        and not hasattr(self, name):
                    self.add_module(name, Conv2d(in_channels[i], out_channels, 1,
                                                 norm=get_norm(norm, out_channels)))
            self.register_parameter(f"weights_{_node_key(node)}",
                                    nn.Parameter(torch.ones(len(inputs))))
            self.add_module(f"outputs_{_node_key(node)}",
                            Conv2d(out_channels, out_channels, 3, padding=1, bias=not norm,
                                   norm=get_norm(norm, out_channels)))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        num_levels = len(feats)
        nodes = list(feats)
        last_of_level = list(range(num_levels))
        for node in self.nodes:
            level, inputs = node
            size = (int(nodes[level].shape[-2]), int(nodes[level].shape[-1]))
            parts = []
            for i in inputs:
                x = nodes[i]
                if x.shape[1] != self.out_channels:
                    x = getattr(self, f"lateral_{i}_f{level}")(x)
                parts.append(_resize_to(x, size))
            weights = F.relu(getattr(self, f"weights_{_node_key(node)}"))
            weights = weights / (weights.sum() + 1e-4)
            fused = (torch.stack(parts, dim=-1) * weights).sum(dim=-1)
            nodes.append(getattr(self, f"outputs_{_node_key(node)}")(fused * fused.sigmoid()))
            last_of_level[level] = len(nodes) - 1
        return [nodes[i] for i in last_of_level]


class _Resample(nn.Module):
    """A level above the backbone: 1x1 conv + norm when the width changes, then 3x3/2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        self.reduction = (Conv2d(in_channels, out_channels, 1, bias=not norm,
                                 norm=get_norm(norm, out_channels))
                          if in_channels != out_channels else None)

    def forward(self, x: Tensor) -> Tensor:
        if self.reduction is not None:
            x = self.reduction(x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BackboneWithTopLevels(Backbone):
    """A backbone plus ``num_top_levels`` pooled levels above its last feature (res6, res7)."""

    def __init__(self, backbone: Backbone, out_channels: int, num_top_levels: int,
                 norm: str) -> None:
        super().__init__()
        self.backbone = backbone
        shapes = backbone.output_shape()
        self._out_features = list(shapes)
        self._out_feature_channels = {k: s.channels for k, s in shapes.items()}
        self._out_feature_strides = {k: s.stride for k, s in shapes.items()}
        self.last = max(shapes, key=lambda k: shapes[k].stride)
        prefix = self.last.rstrip("0123456789")
        level = int(self.last[len(prefix):])
        channels, stride = shapes[self.last].channels, shapes[self.last].stride
        self.top_names = []
        for i in range(1, num_top_levels + 1):
            name = f"{prefix}{level + i}"
            self.add_module(name, _Resample(channels, out_channels, norm))
            channels, stride = out_channels, stride * 2
            self.top_names.append(name)
            self._out_features.append(name)
            self._out_feature_channels[name] = channels
            self._out_feature_strides[name] = stride

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs: dict[str, Tensor] = self.backbone(x)
        y = outputs[self.last]
        for name in self.top_names:
            y = outputs[name] = getattr(self, name)(y)
        return outputs


class BiFPN(Backbone):
    """Repeated BiFPN layers over the bottom-up features; outputs ``p<level>``."""

    def __init__(self, bottom_up: Backbone, in_features: list[str], out_channels: int,
                 num_top_levels: int, num_repeats: int, norm: str) -> None:
        super().__init__()
        self.bottom_up = BackboneWithTopLevels(bottom_up, out_channels, num_top_levels, norm)
        shapes = self.bottom_up.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.BiFPN.IN_FEATURES: {missing} are not backbone outputs "
                             f"(have: {list(shapes)})")
        in_features = sorted(in_features, key=lambda k: shapes[k].stride)
        self._size_divisibility = shapes[in_features[-1]].stride
        self.in_features = in_features + self.bottom_up.top_names
        self._out_features = [f"p{s.bit_length() - 1}"
                              for s in (shapes[f].stride for f in self.in_features)]
        self._out_feature_strides = {p: shapes[f].stride
                                     for p, f in zip(self._out_features, self.in_features,
                                                     strict=True)}
        self._out_feature_channels = dict.fromkeys(self._out_features, out_channels)
        widths = [shapes[f].channels for f in self.in_features]
        self.repeated_bifpn = nn.ModuleList()
        for _ in range(num_repeats):
            self.repeated_bifpn.append(BiFPNLayer(widths, out_channels, norm))
            widths = [out_channels] * len(widths)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        bottom_up = self.bottom_up(x)
        feats = [bottom_up[f] for f in self.in_features]
        for layer in self.repeated_bifpn:
            feats = layer(feats)
        return dict(zip(self._out_features, feats, strict=True))


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_bifpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """detectron2's ResNet (MODEL.RESNETS.*; deformable blocks in every block of a flagged stage:
    the reference's BiFPN ignores DEFORM_INTERVAL) + MODEL.FCOS.TOP_LEVELS pooled levels +
    MODEL.BiFPN.NUM_REPEATS BiFPN layers."""
    bifpn = cfg.MODEL.BiFPN
    return BiFPN(bottom_up=build_deformable_resnet_backbone(cfg, input_shape, interval=1),
                 in_features=list(bifpn.IN_FEATURES), out_channels=bifpn.OUT_CHANNELS,
                 num_top_levels=cfg.MODEL.FCOS.TOP_LEVELS, num_repeats=bifpn.NUM_REPEATS,
                 norm=bifpn.NORM)
