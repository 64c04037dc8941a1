"""Deformable convolution on torchvision's kernels: exact against conv2d and a hand-computed
bilinear sample, gradients, CPU vs CUDA, and blocks that match detectron2's state dicts."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.backbone import resnet as d2_resnet
from torch.func import functional_call

from orchestrator.models.deform import (
    DeformBasicBlock,
    DeformBottleneckBlock,
    DeformConv,
    ModulatedDeformConv,
    split_offset_mask,
)

GEOMETRIES = [(1, 1, 1), (2, 2, 2)]  # (stride, padding, dilation)


def _bilinear(image: torch.Tensor, y: float, x: float) -> float:
    """The value at (y, x) of an H x W image by bilinear interpolation, 0 outside."""
    h, w = image.shape
    y0, x0 = math.floor(y), math.floor(x)
    total = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * float(image[yy, xx])
    return total


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["s1", "s2-p2-d2"])
@pytest.mark.parametrize("groups", [1, 2])
def test_zero_offsets_and_unit_mask_equal_conv2d(geometry: tuple[int, int, int],
                                                 groups: int) -> None:
    stride, padding, dilation = geometry
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 8)
    plain = DeformConv(4, 6, 3, stride=stride, padding=padding, dilation=dilation,
                       groups=groups, deformable_groups=2)
    modulated = ModulatedDeformConv(4, 6, 3, stride=stride, padding=padding,
                                    dilation=dilation, groups=groups, deformable_groups=2)
    torch.nn.init.normal_(modulated.bias)  # type: ignore[arg-type]
    h, w = plain.output_size(9, 8)
    offset, mask = torch.zeros(2, 2 * 18, h, w), torch.ones(2, 2 * 9, h, w)
    expected = F.conv2d(x, plain.weight, None, stride, padding, dilation, groups)
    assert torch.allclose(plain(x, offset), expected, atol=1e-5)
    expected = F.conv2d(x, modulated.weight, modulated.bias, stride, padding, dilation, groups)
    assert torch.allclose(modulated(x, offset, mask), expected, atol=1e-5)
    assert plain.bias is None and modulated.bias is not None


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["s1", "s2-p2-d2"])
def test_fractional_offsets_sample_bilinearly_row_then_column(
        geometry: tuple[int, int, int]) -> None:
    """Tap k = row*3+col moves by (channel 2k, channel 2k+1) = (dy, dx); its mask is channel k."""
    stride, padding, dilation = geometry
    torch.manual_seed(0)
    image = torch.randn(7, 8, dtype=torch.float64)
    conv = ModulatedDeformConv(1, 1, 3, stride=stride, padding=padding, dilation=dilation,
                               bias=False).double()
    row, col = 0, 2
    k = row * 3 + col
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, row, col] = 1.0
    h, w = conv.output_size(7, 8)
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    dy, dx = 0.3 + 0.15 * ii, -0.65 + 0.2 * jj
    offset = torch.randn(1, 18, h, w, dtype=torch.float64)  # other taps: weight 0
    offset[0, 2 * k], offset[0, 2 * k + 1] = dy, dx
    mask = torch.rand(1, 9, h, w, dtype=torch.float64)
    out = conv(image[None, None], offset, mask)[0, 0]
    for i in range(h):
        for j in range(w):
            y = i * stride - padding + row * dilation + float(dy[i, j])
            x = j * stride - padding + col * dilation + float(dx[i, j])
            expected = float(mask[0, k, i, j]) * _bilinear(image, y, x)
            assert out[i, j].item() == pytest.approx(expected, abs=1e-12), (i, j)
    plain = DeformConv(1, 1, 3, stride=stride, padding=padding, dilation=dilation).double()
    plain.weight.data.copy_(conv.weight.data)
    assert torch.allclose(plain(image[None, None], offset)[0, 0] * mask[0, k], out)


def _fractional_offsets(*shape: int) -> torch.Tensor:
    """Offsets well away from integers, where bilinear sampling is differentiable."""
    magnitude = 0.2 + 0.6 * torch.rand(*shape, dtype=torch.float64)
    sign = torch.where(torch.rand(*shape) < 0.5, -1.0, 1.0).double()
    return magnitude * sign + torch.randint(-1, 2, shape).double()


def test_gradcheck_in_float64() -> None:
    torch.manual_seed(0)
    conv = ModulatedDeformConv(4, 2, 3, stride=1, padding=1, groups=2,
                               deformable_groups=2).double()
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    offset = _fractional_offsets(1, 36, 4, 5).requires_grad_()
    mask = torch.rand(1, 18, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = conv.weight.detach().clone().requires_grad_()
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def run(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor) -> torch.Tensor:
        return functional_call(conv, {"weight": weight, "bias": bias}, (x, offset, mask))

    assert torch.autograd.gradcheck(run, (x, offset, mask, weight, bias), eps=1e-6, atol=1e-5)
    plain = DeformConv(4, 2, 3, stride=2, padding=1).double()
    off2 = _fractional_offsets(1, 18, 2, 3).requires_grad_()
    assert torch.autograd.gradcheck(plain, (x, off2), eps=1e-6, atol=1e-5)


@pytest.mark.gpu
def test_cpu_equals_cuda() -> None:
    torch.manual_seed(0)
    conv = ModulatedDeformConv(6, 8, 3, stride=2, padding=2, dilation=2, groups=2,
                               deformable_groups=3).double()
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64)
    h, w = conv.output_size(11, 9)
    offset = 2 * torch.randn(2, 3 * 18, h, w, dtype=torch.float64)
    mask = torch.rand(2, 3 * 9, h, w, dtype=torch.float64)
    results = []
    for device in ("cpu", "cuda"):
        conv.to(device).zero_grad()
        inputs = [t.to(device).requires_grad_() for t in (x, offset, mask)]
        out = conv(*inputs)
        (out * torch.linspace(-1, 1, out.numel(), device=device,
                              dtype=out.dtype).reshape(out.shape)).sum().backward()
        assert conv.bias is not None
        grads = [t.grad for t in inputs] + [conv.weight.grad, conv.bias.grad]
        results.append([out.detach().cpu()] + [g.cpu() for g in grads if g is not None])
    assert len(results[0]) == len(results[1]) == 6
    for cpu, cuda in zip(*results, strict=True):
        assert torch.allclose(cpu, cuda, atol=1e-9)


def test_empty_batch_gives_an_empty_output_of_the_right_shape() -> None:
    conv = DeformConv(4, 6, 3, stride=2, padding=1)
    out = conv(torch.zeros(0, 4, 9, 8), torch.zeros(0, 18, 5, 4))
    assert out.shape == (0, 6, 5, 4)


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="no bias"):
        DeformConv(4, 4, 3, bias=True)
    with pytest.raises(ValueError, match="offset has 18 channels, expected 36"):
        DeformConv(4, 4, 3, padding=1, deformable_groups=2)(torch.zeros(1, 4, 5, 5),
                                                            torch.zeros(1, 18, 5, 5))


BLOCK_CASES = [
    {"deform_modulated": False, "deform_num_groups": 1, "stride": 1},
    {"deform_modulated": True, "deform_num_groups": 1, "stride": 2},
    {"deform_modulated": True, "deform_num_groups": 2, "stride": 2, "dilation": 2},
]


@pytest.mark.parametrize("case", BLOCK_CASES, ids=["dcn", "mdcn-s2", "mdcn-g2-d2"])
def test_bottleneck_state_dict_is_detectron2s(case: dict[str, int]) -> None:
    """Same entries as detectron2's own DeformBottleneckBlock (built, never run: it needs _C)."""
    kwargs: dict[str, Any] = {"bottleneck_channels": 16, "norm": "FrozenBN", **case}
    ours = DeformBottleneckBlock(32, 64, **kwargs).state_dict()
    theirs = d2_resnet.DeformBottleneckBlock(32, 64, **kwargs).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    per_group = 27 if case["deform_modulated"] else 18
    assert ours["conv2_offset.weight"].shape == (per_group * case["deform_num_groups"], 16, 3, 3)
    assert "conv2.bias" not in ours
    assert not ours["conv2_offset.weight"].any() and not ours["conv2_offset.bias"].any()


def test_fresh_blocks_compute_their_plain_counterparts() -> None:
    """Zero-initialised offsets: a new deformable block is the ordinary block (mask 1)."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 10, 12)
    kwargs: dict[str, Any] = {"bottleneck_channels": 16, "stride": 2, "norm": "BN"}
    for modulated in (False, True):
        block = DeformBottleneckBlock(32, 64, deform_modulated=modulated, **kwargs).eval()
        if modulated:  # sigmoid(100) == 1 in float32: the mask channels 18-26 switch fully on
            torch.nn.init.constant_(block.conv2_offset.bias[18:], 100.0)
        plain = d2_resnet.BottleneckBlock(32, 64, **kwargs).eval()
        state = {k: v for k, v in block.state_dict().items() if "conv2_offset" not in k}
        plain.load_state_dict(state)
        assert torch.allclose(block(x), plain(x), atol=1e-5)
    basic = DeformBasicBlock(32, 64, stride=2, norm="BN").eval()
    plain_basic = d2_resnet.BasicBlock(32, 64, stride=2, norm="BN").eval()
    plain_basic.load_state_dict({k: v for k, v in basic.state_dict().items()
                                 if "conv2_offset" not in k})
    assert torch.allclose(basic(x), plain_basic(x), atol=1e-5)


def test_offset_mask_split_follows_detectron2s_layout() -> None:
    values = torch.arange(54, dtype=torch.float32).reshape(1, 54, 1, 1)
    offset, mask = split_offset_mask(values, deformable_groups=2)
    assert offset.flatten().tolist() == list(range(36))
    assert torch.equal(mask.flatten(), torch.arange(36, 54, dtype=torch.float32).sigmoid())
    # detectron2: chunk into 3 along channels, offsets = first two chunks, mask = the third.
    a, b, c = torch.chunk(values, 3, dim=1)
    assert torch.equal(offset, torch.cat((a, b), dim=1)) and torch.equal(mask, c.sigmoid())


def test_offsets_train() -> None:
    """Gradients reach conv2_offset through the deformable conv, so offsets can be learned."""
    torch.manual_seed(0)
    block = DeformBottleneckBlock(8, 8, bottleneck_channels=4, deform_modulated=True,
                                  norm="BN")
    block(torch.randn(2, 8, 6, 6)).square().sum().backward()
    assert block.conv2_offset.weight.grad is not None
    assert block.conv2_offset.weight.grad.abs().sum() > 0
