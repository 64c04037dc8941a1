"""Deformable convolution without detectron2's compiled ops, and the ResNet blocks that use it.

detectron2's ``DeformConv`` / ``ModulatedDeformConv`` call kernels from ``detectron2._C``, which
our pure-Python build lacks. ``torchvision.ops.deform_conv2d`` computes the same thing (same
offset layout: for deform group g and kernel tap k = row * kw + col, channel
``g*2*kh*kw + 2k`` is the vertical and ``+1`` the horizontal shift) on CPU and CUDA, so these
classes keep detectron2's constructor arguments, attributes and parameter names and swap only
the kernel. The blocks build the state-dict names of detectron2's ``DeformBottleneckBlock``
(``conv2_offset``, ``conv2``) so the reference's dcn checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = [
    "DeformConv",
    "ModulatedDeformConv",
    "DeformBottleneckBlock",
    "DeformBasicBlock",
    "split_offset_mask",
]


class _DeformConvBase(nn.Module):
    """Arguments, weight and the Conv2d-like norm/activation tail shared by both variants."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1,
                 deformable_groups: int = 1, bias: bool = False, norm: nn.Module | None = None,
                 activation: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} must "
                             f"be divisible by groups {groups}")
        if in_channels % deformable_groups:
            raise ValueError(f"in_channels {in_channels} must be divisible by "
                             f"deformable_groups {deformable_groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.with_bias = bias
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output for an input of ``height`` x ``width``."""
        h, w = (
            (size + 2 * p - (d * (k - 1) + 1)) // s + 1
            for size, p, d, k, s in zip((height, width), self.padding, self.dilation,
                                        self.kernel_size, self.stride, strict=True))
        return h, w

    def _deform(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        expected = 2 * self.deformable_groups * self.kernel_size[0] * self.kernel_size[1]
        if offset.shape[1] != expected:
            raise ValueError(f"offset has {offset.shape[1]} channels, expected {expected} "
                             f"(2 x {self.deformable_groups} groups x kernel taps)")
        if x.shape[0] == 0:  # torchvision's kernels refuse empty batches
            out = x.new_zeros((0, self.out_channels, *self.output_size(*x.shape[-2:])))
            out = out + 0 * self.weight.sum()  # keep the weight in the graph
        else:
            out = deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride,
                                padding=self.padding, dilation=self.dilation, mask=mask)
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"deformable_groups={self.deformable_groups}, bias={self.with_bias}")


class DeformConv(_DeformConvBase):
    """Deformable convolution (DCN v1): ``forward(x, offset)``; no bias, as in detectron2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1,
                 deformable_groups: int = 1, bias: bool = False, norm: nn.Module | None = None,
                 activation: Callable[[Tensor], Tensor] | None = None) -> None:
        if bias:
            raise ValueError("DeformConv has no bias (use ModulatedDeformConv for one)")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deformable_groups, False, norm, activation)

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        return self._deform(x, offset, None)


class ModulatedDeformConv(_DeformConvBase):
    """Modulated deformable convolution (DCN v2): ``forward(x, offset, mask)``, where ``mask``
    (N, deformable_groups*kh*kw, H, W) scales each sampled tap; bias by default."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1,
                 deformable_groups: int = 1, bias: bool = True, norm: nn.Module | None = None,
                 activation: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deformable_groups, bias, norm, activation)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return self._deform(x, offset, mask)


def split_offset_mask(offset_mask: Tensor, deformable_groups: int) -> tuple[Tensor, Tensor]:
    """The 27-per-group output of a modulated block's ``conv2_offset``: the first 18*G channels
    are offsets, the last 9*G pass through a sigmoid as the mask (detectron2's layout)."""
    num_offsets = 18 * deformable_groups
    return offset_mask[:, :num_offsets], offset_mask[:, num_offsets:].sigmoid()


def _offset_conv(channels: int, modulated: bool, deform_groups: int, stride: int,
                 dilation: int) -> Conv2d:
    """Plain 3x3 conv (bias, no norm) predicting offsets (and mask), zero-initialised so a new
    block starts as an ordinary convolution."""
    per_group = 27 if modulated else 18
    conv = Conv2d(channels, per_group * deform_groups, kernel_size=3, stride=stride,
                  padding=dilation, dilation=dilation)
    nn.init.constant_(conv.weight, 0)
    nn.init.constant_(conv.bias, 0)
    return conv


def _deform_conv(channels: int, modulated: bool, deform_groups: int, stride: int,
                 dilation: int, groups: int, norm: str) -> DeformConv | ModulatedDeformConv:
    op = ModulatedDeformConv if modulated else DeformConv
    return op(channels, channels, kernel_size=3, stride=stride, padding=dilation, bias=False,
              groups=groups, dilation=dilation, deformable_groups=deform_groups,
              norm=get_norm(norm, channels))


class _DeformBlock(CNNBlockBase):
    """What both deformable residual blocks share: the offset settings, the projection
    shortcut (registered first, as detectron2's blocks do, so state dicts list it first) and
    running ``conv2`` on offsets read from its input."""

    conv2_offset: Conv2d
    conv2: DeformConv | ModulatedDeformConv

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, norm: str,
                 deform_modulated: bool, deform_num_groups: int) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated
        self.deform_num_groups = deform_num_groups
        self.shortcut = (Conv2d(in_channels, out_channels, kernel_size=1, stride=stride,
                                bias=False, norm=get_norm(norm, out_channels))
                         if in_channels != out_channels else None)

    def _deformable_conv2(self, x: Tensor) -> Tensor:
        offset = self.conv2_offset(x)
        if self.deform_modulated:
            offset, mask = split_offset_mask(offset, self.deform_num_groups)
            return self.conv2(x, offset, mask)
        return self.conv2(x, offset)


class DeformBottleneckBlock(_DeformBlock):
    """detectron2's bottleneck (1x1, 3x3, 1x1) with a deformable 3x3 ``conv2``: the same
    arguments and state-dict names as ``detectron2.modeling.backbone.resnet
    .DeformBottleneckBlock``, running on :class:`DeformConv` / :class:`ModulatedDeformConv`."""

    def __init__(self, in_channels: int, out_channels: int, *, bottleneck_channels: int,
                 stride: int = 1, num_groups: int = 1, norm: str = "BN",
                 stride_in_1x1: bool = False, dilation: int = 1, deform_modulated: bool = False,
                 deform_num_groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, stride, norm=norm,
                         deform_modulated=deform_modulated, deform_num_groups=deform_num_groups)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1,
                            bias=False, norm=get_norm(norm, bottleneck_channels))
        self.conv2_offset = _offset_conv(bottleneck_channels, deform_modulated,
                                         deform_num_groups, stride_3x3, dilation)
        self.conv2 = _deform_conv(bottleneck_channels, deform_modulated, deform_num_groups,
                                  stride_3x3, dilation, num_groups, norm)
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, out_channels))
        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self._deformable_conv2(out))
        out = self.conv3(out)
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return F.relu_(out)


class DeformBasicBlock(_DeformBlock):
    """detectron2's R-18/R-34 basic block (3x3 ``conv1`` with the stride, 3x3 ``conv2``) whose
    ``conv2`` is deformable, with its ``conv2_offset`` reading conv1's output.

    detectron2 refuses deformable stages for R-18/R-34; this extension lets the CPU demos
    exercise deformable blocks at R-18 cost.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1,
                 norm: str = "BN", deform_modulated: bool = False,
                 deform_num_groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, stride, norm=norm,
                         deform_modulated=deform_modulated, deform_num_groups=deform_num_groups)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1,
                            bias=False, norm=get_norm(norm, out_channels))
        self.conv2_offset = _offset_conv(out_channels, deform_modulated, deform_num_groups, 1, 1)
        self.conv2 = _deform_conv(out_channels, deform_modulated, deform_num_groups, 1, 1, 1,
                                  norm)
        for layer in (self.conv1, self.conv2, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = self._deformable_conv2(out)
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return F.relu_(out)
