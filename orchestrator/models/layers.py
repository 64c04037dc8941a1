"""Small tensor helpers shared by FCOS, BlendMask and CondInst."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import get_norm
from torch import Tensor, nn

__all__ = ["Scale", "aligned_bilinear", "compute_locations", "conv_norm_relu", "normal_init"]


class Scale(nn.Module):
    """A learnable scalar per FPN level (FCOS ``USE_SCALE``); the checkpoint key is ``scale``."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def compute_locations(h: int, w: int, stride: int, device: torch.device) -> Tensor:
    """(h*w, 2) image points (x, y) of a level's cells: cell (i, j) -> (j*s + s//2, i*s + s//2)."""
    shifts_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)), dim=1) + stride // 2


def aligned_bilinear(tensor: Tensor, factor: int) -> Tensor:
    """Upsample N x C x H x W by an integer factor so that output pixel centres stay on the
    FCOS "i*s + s/2" grid (plain bilinear resizing shifts them by half a pixel)."""
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    if factor == 1:
        return tensor
    h, w = tensor.shape[2:]
    tensor = F.pad(tensor, pad=(0, 1, 0, 1), mode="replicate")
    tensor = F.interpolate(tensor, size=(factor * h + 1, factor * w + 1), mode="bilinear",
                           align_corners=True)
    tensor = F.pad(tensor, pad=(factor // 2, 0, factor // 2, 0), mode="replicate")
    return tensor[:, :, : factor * h, : factor * w]


def normal_init(conv: nn.Conv2d, std: float = 0.01) -> nn.Conv2d:
    """normal(std) weights and zero bias: the init of FCOS's heads and instance branches."""
    nn.init.normal_(conv.weight, std=std)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)
    return conv


def conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> nn.Module:
    """conv (no bias when normalised) -> norm -> ReLU as one Sequential (keys ``0``, ``1``),
    kaiming-uniform(a=1) initialised like the reference's basis and mask branches."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                     bias=not norm)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)
    layers: list[nn.Module] = [conv]
    if norm:
        layers.append(get_norm(norm, out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
