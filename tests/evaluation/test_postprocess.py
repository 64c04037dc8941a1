"""The chunked mask postprocess gives exactly the naive (all-at-once) masks, chunk by chunk."""

from __future__ import annotations

import functools

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.layers.mask_ops import paste_masks_in_image
from torch.nn import functional as F

from orchestrator.evaluation.postprocess import (
    MaskChunks,
    _aligned_to_input,
    aligned_bilinear,
    chunk_size,
    collect_bitmasks,
    dense_mask_chunks,
    encode_rles,
    global_mask_chunks,
    roi_mask_chunks,
)

N = 6
ONE_PER_CHUNK, ALL_IN_ONE = 1, 2**40
SEVERAL = "several"  # a budget for 2 instances per chunk, computed per case


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _naive_global(masks: torch.Tensor, stride: int, input_size: tuple[int, int],
                  output_size: tuple[int, int]) -> torch.Tensor:
    """CondInst's reference postprocess on all instances at once."""
    full = aligned_bilinear(masks[:, None], stride)[:, :, : input_size[0], : input_size[1]]
    full = F.interpolate(full, size=output_size, mode="bilinear", align_corners=False)
    return full[:, 0] > 0.5


def _random_boxes(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Fractional boxes clipped to the image (as detector_postprocess leaves them), some
    touching its border, one tiny."""
    g = _generator(seed)
    h, w = size
    xy0 = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.9, h * 0.9])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 0.3
    boxes = torch.cat([xy0, xy0 + wh], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    boxes[-1] = torch.tensor([1.2, 1.7, 1.9, 2.4])
    return boxes


def _budget(budget: int | str, per_two: int) -> int:
    return per_two if isinstance(budget, str) else budget


def _sizes(chunks: MaskChunks) -> list[int]:
    return [s.stop - s.start for s, _ in chunks]


GlobalCase = tuple[tuple[int, int], int, tuple[int, int], tuple[int, int]]
GLOBAL_CASES: list[GlobalCase] = [  # (mask h, w), stride, un-padded input, output
    ((9, 7), 4, (33, 26), (61, 47)),  # odd sizes, upscaled
    ((8, 8), 4, (32, 29), (13, 11)),  # downscaled output
    ((10, 6), 1, (9, 5), (27, 16)),  # masks already at input resolution
    ((5, 4), 8, (40, 32), (40, 32)),  # no crop, same size
]


@pytest.mark.parametrize("case", GLOBAL_CASES, ids=str)
@pytest.mark.parametrize("budget", [ONE_PER_CHUNK, SEVERAL, ALL_IN_ONE])
def test_global_masks_match_the_naive_path(case: GlobalCase, budget: int | str) -> None:
    (h, w), stride, input_size, output_size = case
    masks = torch.rand(N, h, w, generator=_generator(h * w))
    expected = _naive_global(masks, stride, input_size, output_size)
    per_two = 2 * 4 * (2 * output_size[0] * output_size[1] + 2 * h * w * stride**2)
    chunks = functools.partial(global_mask_chunks, masks, stride=stride, input_size=input_size,
                               output_size=output_size, chunk_bytes=_budget(budget, per_two))
    got = collect_bitmasks(chunks(), N, output_size)
    assert got.dtype == torch.bool and torch.equal(got, expected)
    expected_sizes = {ONE_PER_CHUNK: [1] * N, SEVERAL: [2] * 3, ALL_IN_ONE: [N]}
    assert _sizes(chunks()) == expected_sizes[budget]


@pytest.mark.parametrize("size", [(57, 45), (31, 64), (20, 20)], ids=str)
@pytest.mark.parametrize("budget", [ONE_PER_CHUNK, SEVERAL, ALL_IN_ONE])
def test_roi_masks_match_detectron2_paste(size: tuple[int, int], budget: int | str) -> None:
    g = _generator(size[0])
    masks = torch.rand(N, 28, 28, generator=g)
    masks[0] = 1.0  # saturated probabilities reach exactly the threshold at the box edges
    boxes = _random_boxes(N, size, seed=size[1])
    cpu_semantics = paste_masks_in_image(masks, boxes, size)  # one box at a time
    chunk_bytes = _budget(budget, 2 * 4 * 4 * size[0] * size[1])
    got = collect_bitmasks(roi_mask_chunks(masks, boxes, output_size=size,
                                           chunk_bytes=chunk_bytes), N, size)
    assert torch.equal(got, cpu_semantics)


def test_roi_boxes_outside_the_image_give_empty_masks() -> None:
    boxes = torch.tensor([[70.0, 5.0, 90.0, 20.0], [-30.0, -20.0, -2.0, -1.0]])
    got = collect_bitmasks(roi_mask_chunks(torch.ones(2, 14, 14), boxes, output_size=(40, 60)),
                           2, (40, 60))
    assert not got.any()


def test_chunk_size_follows_the_budget() -> None:
    assert chunk_size(100, 30) == 3
    assert chunk_size(10, 30) == 1  # never zero: one instance always runs
    full = 4 * 300 * 200  # one float mask at 300x200
    masks = torch.rand(10, 10, 8)
    for per_chunk in (1, 3, 4, 10):
        budget = per_chunk * (2 * full + 2 * 4 * 40 * 32)
        chunks = global_mask_chunks(masks, stride=4, input_size=(40, 32), output_size=(300, 200),
                                    chunk_bytes=budget)
        assert max(_sizes(chunks)) == per_chunk
    rois = roi_mask_chunks(torch.rand(10, 14, 14), _random_boxes(10, (300, 200), 0),
                           output_size=(300, 200), chunk_bytes=3 * 4 * full)
    assert _sizes(rois) == [3, 3, 3, 1]


def test_chunks_are_pycocotools_column_major() -> None:
    _, chunk = next(global_mask_chunks(torch.rand(3, 5, 4), stride=2, input_size=(9, 8),
                                       output_size=(17, 13)))
    assert chunk.shape == (3, 17, 13) and chunk.stride() == (17 * 13, 1, 17)


@pytest.mark.parametrize("budget", [ONE_PER_CHUNK, ALL_IN_ONE])
def test_rles_decode_to_the_same_masks(budget: int) -> None:
    masks = torch.rand(N, 9, 7, generator=_generator(1))
    expected = _naive_global(masks, 4, (35, 27), (51, 39))
    rles = encode_rles(global_mask_chunks(masks, stride=4, input_size=(35, 27),
                                          output_size=(51, 39), chunk_bytes=budget))
    assert len(rles) == N and all(isinstance(r["counts"], str) for r in rles)
    decoded = mask_util.decode([{**r, "counts": r["counts"].encode()} for r in rles])
    assert np.array_equal(decoded.transpose(2, 0, 1).astype(bool), expected.numpy())


def test_dense_rles_match_detectron2_encoding() -> None:
    dense = torch.rand(N, 23, 17, generator=_generator(2)) > 0.6
    reference = [mask_util.encode(np.array(m[:, :, None], order="F", dtype="uint8"))[0]
                 for m in dense]
    rles = encode_rles(dense_mask_chunks(dense, chunk_bytes=2 * 23 * 17 * 2))
    assert [r["counts"] for r in rles] == [r["counts"].decode() for r in reference]


def test_no_instances_give_no_masks() -> None:
    chunks = global_mask_chunks(torch.zeros(0, 5, 4), stride=4, input_size=(20, 16),
                                output_size=(40, 30))
    assert encode_rles(chunks) == []
    empty = roi_mask_chunks(torch.zeros(0, 14, 14), torch.zeros(0, 4), output_size=(40, 30))
    assert collect_bitmasks(empty, 0, (40, 30)).shape == (0, 40, 30)


def test_aligned_bilinear_keeps_pixel_centres_on_the_input_grid() -> None:
    row = torch.tensor([[[[0.0, 4.0, 8.0]]]])
    out = aligned_bilinear(row, 4)[0, 0, 0]
    # input pixel i lands on output pixel 4i + 2; left of pixel 0 is replicated, right of
    # the last one is replicated padding.
    assert out[[2, 6, 10]].tolist() == [0.0, 4.0, 8.0]
    assert out[:3].tolist() == [0.0, 0.0, 0.0] and out[3].item() == pytest.approx(1.0)
    assert out[11].item() == pytest.approx(8.0)
    assert aligned_bilinear(row, 1) is row


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("input_size", [(40, 30), (37, 29), (2, 1), (1, 40)], ids=str)
def test_the_fused_expansion_copies_aligned_bilinear_exactly(stride: int,
                                                            input_size: tuple[int, int]) -> None:
    masks = torch.rand(3, 1, 10, 8, generator=_generator(stride))
    expected = aligned_bilinear(masks, stride)[:, :, : input_size[0], : input_size[1]]
    got = _aligned_to_input(masks, stride, input_size)
    assert got.is_contiguous() and torch.equal(got, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("size", [(57, 45), (31, 64)], ids=str)
def test_detectron2_paste_agrees_on_cpu_and_cuda(size: tuple[int, int]) -> None:
    """detectron2 pastes one box at a time on CPU and all at once on CUDA: same masks."""
    masks = torch.rand(N, 28, 28, generator=_generator(size[0]))
    masks[0] = 1.0
    boxes = _random_boxes(N, size, seed=size[1])
    on_cuda = paste_masks_in_image(masks.cuda(), boxes.cuda(), size).cpu()
    assert torch.equal(paste_masks_in_image(masks, boxes, size), on_cuda)
