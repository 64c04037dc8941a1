"""Expand predicted masks to the original image size a bounded chunk of instances at a time.

Why it exists: the naive postprocess resizes all N masks of an image to full resolution as
float at once (N x H x W x 4 bytes: 3.7 GiB for 100 masks of a 3648x2736 photo, and a second
tensor of that size for the thresholded copy). Here the number of instances expanded together
is derived from a memory budget, each chunk is thresholded at once, and only the binary result
is kept: as per-instance RLEs (``encode_rles``, what COCO evaluation needs) or as one bool
``N x H x W`` tensor (``collect_bitmasks``, 1 byte per pixel, allocated once).

The binary masks are bit-identical to the naive path: every op here works on each instance
independently, and a chunk runs the same arithmetic ops the naive path runs on the whole batch
(padding and cropping, which only move data, are merged into one copy).

Two kinds of predictions are supported:

* ROI masks (Mask R-CNN, BlendMask): ``(N, M, M)`` probabilities inside each box, pasted
  with detectron2's ``paste_masks_in_image`` semantics (``>= threshold``).
* Global masks (CondInst): ``(N, h, w)`` probabilities over the padded input at a stride,
  expanded with ``aligned_bilinear``, cropped to the un-padded input, bilinearly resized
  (``align_corners=False``) to the output size and thresholded with ``> threshold``.

Chunk generators yield ``(slice, masks)`` where ``masks`` is a bool ``(n, H, W)`` tensor laid
out column-major per instance (strides ``(H*W, 1, H)``): exactly the Fortran order pycocotools
encodes, so RLE encoding needs no further copy.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch.nn import functional as F

from orchestrator.evaluation.oom import OOMGuard
from orchestrator.models.layers import aligned_bilinear  # one implementation, shared

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MaskChunks",
    "chunk_size",
    "aligned_bilinear",
    "roi_mask_chunks",
    "global_mask_chunks",
    "dense_mask_chunks",
    "encode_rles",
    "collect_bitmasks",
]

DEFAULT_CHUNK_BYTES = 256 * 2**20

# Full-resolution temporaries per instance, counted in float masks (4 bytes per pixel):
# ROI paste: sampling grid (2 floats) + grid_sample output (1) + two bool copies (0.5).
_ROI_TEMPORARIES = 4
# Global resize: interpolate output (1) + thresholded and column-major bool copies (0.5).
_GLOBAL_TEMPORARIES = 2
# aligned_bilinear at the padded input resolution: the resized tensor and its padded copy.
_ALIGNED_TEMPORARIES = 2

Size = tuple[int, int]
MaskChunks = Iterator[tuple[slice, torch.Tensor]]


def chunk_size(chunk_bytes: int, bytes_per_instance: int) -> int:
    """Instances per chunk so that a chunk's temporaries fit ``chunk_bytes`` (at least 1)."""
    return max(1, int(chunk_bytes) // max(1, int(bytes_per_instance)))


def _float_mask_bytes(size: Size, dtype: torch.dtype) -> int:
    itemsize = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    return int(size[0]) * int(size[1]) * itemsize


def _column_major(masks: torch.Tensor) -> torch.Tensor:
    """Same values, each ``H x W`` plane stored column by column (pycocotools' order)."""
    return masks.transpose(1, 2).contiguous().transpose(1, 2)


def _chunks(n: int, per_chunk: int) -> Iterator[slice]:
    for start in range(0, n, per_chunk):
        yield slice(start, min(start + per_chunk, n))


def _describe(n: int, size: Size, per_chunk: int, chunk_bytes: int) -> str:
    return (f"chunk of {n} masks at {size[0]}x{size[1]}, {per_chunk} per chunk "
            f"for a budget of {chunk_bytes / 2**20:.0f} MiB")


def _run_chunks(op: Any, tensors: tuple[torch.Tensor, ...], *, size: Size, per_chunk: int,
                chunk_bytes: int, guard: OOMGuard | None) -> MaskChunks:
    guard = guard if guard is not None else OOMGuard()
    for chunk in _chunks(len(tensors[0]), per_chunk):
        what = _describe(chunk.stop - chunk.start, size, per_chunk, chunk_bytes)
        yield chunk, guard.run(op, *(t[chunk] for t in tensors), what=what)


def _aligned_to_input(masks: torch.Tensor, stride: int, input_size: Size) -> torch.Tensor:
    """``aligned_bilinear(masks, stride)`` cropped to ``input_size``, contiguous.

    Same values: the replicate padding and the crop only move data, so they are done here as
    one copy of the cropped region, sparing a full-resolution pass.
    """
    h, w = masks.shape[2:]
    height, width = min(input_size[0], stride * h), min(input_size[1], stride * w)
    shift = stride // 2
    if stride == 1 or height <= shift or width <= shift:
        return aligned_bilinear(masks, stride)[:, :, :height, :width].contiguous()
    upsampled = F.interpolate(F.pad(masks, pad=(0, 1, 0, 1), mode="replicate"),
                              size=(stride * h + 1, stride * w + 1), mode="bilinear",
                              align_corners=True)
    out = upsampled.new_empty((*masks.shape[:2], height, width))
    out[:, :, shift:, shift:] = upsampled[:, :, : height - shift, : width - shift]
    out[:, :, :shift, shift:] = upsampled[:, :, :1, : width - shift]
    out[:, :, :, :shift] = out[:, :, :, shift : shift + 1]
    return out


def _resize_chunk(masks: torch.Tensor, *, stride: int, input_size: Size, size: Size,
                  threshold: float) -> torch.Tensor:
    """The naive CondInst postprocess, on a chunk: bool, column-major ``(n, H, W)``."""
    masks = _aligned_to_input(masks[:, None], stride, input_size)
    masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)[:, 0]
    # Threshold straight into column-major planes: one pass instead of compare, then transpose.
    planes = torch.empty((masks.shape[0], size[1], size[0]), dtype=torch.bool,
                         device=masks.device)
    torch.gt(masks.transpose(1, 2), threshold, out=planes)
    return planes.transpose(1, 2)


def global_mask_chunks(masks: torch.Tensor, *, stride: int, input_size: Size, output_size: Size,
                       threshold: float = 0.5, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                       guard: OOMGuard | None = None) -> MaskChunks:
    """Binary masks at ``output_size`` from ``(N, h, w)`` global mask probabilities.

    Args:
        masks: probabilities over the padded input at ``stride`` (``GlobalMasks.tensor``).
        stride: ``aligned_bilinear`` factor up to the padded input (1: already there).
        input_size: un-padded input ``(height, width)``; the padding is cropped off.
        output_size: ``(height, width)`` of the original image.
        threshold: a pixel is foreground where the resized probability is ``> threshold``.
        chunk_bytes: memory budget of one chunk's temporaries.
        guard: CUDA OOM recovery shared by an evaluation (a fresh one if not given).

    Returns:
        ``(slice, bool (n, H, W))`` chunks in order, on the device that computed them.
    """
    if masks.dim() != 3:
        raise ValueError(f"global masks must be (N, h, w), got {tuple(masks.shape)}")
    size = (int(output_size[0]), int(output_size[1]))
    padded = (masks.shape[1] * stride, masks.shape[2] * stride)
    per_instance = (_float_mask_bytes(size, masks.dtype) * _GLOBAL_TEMPORARIES
                    + _float_mask_bytes(padded, masks.dtype) * _ALIGNED_TEMPORARIES)
    op = functools.partial(_resize_chunk, stride=stride, size=size, threshold=threshold,
                           input_size=(int(input_size[0]), int(input_size[1])))
    return _run_chunks(op, (masks,), size=size, per_chunk=chunk_size(chunk_bytes, per_instance),
                       chunk_bytes=chunk_bytes, guard=guard)


def _region(boxes: torch.Tensor, size: Size) -> tuple[slice, slice] | None:
    """Pixels within a pixel of the boxes (detectron2's ``skip_empty`` region), or None."""
    x0, y0 = (int(v) for v in boxes.min(dim=0).values.floor()[:2].sub(1).clamp(min=0))
    x1 = min(int(boxes[:, 2].max().ceil()) + 1, size[1])
    y1 = min(int(boxes[:, 3].max().ceil()) + 1, size[0])
    return (slice(y0, y1), slice(x0, x1)) if y1 > y0 and x1 > x0 else None


def _paste_region(masks: torch.Tensor, boxes: torch.Tensor, ys: slice,
                  xs: slice) -> torch.Tensor:
    """Probabilities of ``masks`` pasted at ``boxes``, over the pixels ``ys`` x ``xs``.

    The sampling math is detectron2's ``paste_masks_in_image`` (grid_sample at pixel centres,
    ``align_corners=False``), so values match it wherever both compute them; outside the
    region bounding the boxes every pasted value is below 0.5.
    """
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    img_y = torch.arange(ys.start, ys.stop, device=masks.device, dtype=torch.float32) + 0.5
    img_x = torch.arange(xs.start, xs.stop, device=masks.device, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    n, h, w = masks.shape[0], img_y.size(1), img_x.size(1)
    grid = torch.stack([img_x[:, None, :].expand(n, h, w), img_y[:, :, None].expand(n, h, w)], 3)
    if not masks.dtype.is_floating_point:
        masks = masks.float()
    return F.grid_sample(masks[:, None], grid.to(masks.dtype), align_corners=False)[:, 0]


def _paste_chunk(masks: torch.Tensor, boxes: torch.Tensor, *, size: Size,
                 threshold: float) -> torch.Tensor:
    """Pasted and thresholded masks of a chunk: bool, column-major ``(n, H, W)``."""
    n = masks.shape[0]
    planes = torch.zeros((n, size[1], size[0]), dtype=torch.bool, device=masks.device)
    # CPU: one box at a time touches only that box's pixels (as detectron2 does on CPU);
    # GPU: the whole chunk in one launch over the region bounding its boxes.
    for group in _chunks(n, 1 if masks.device.type == "cpu" else n):
        region = _region(boxes[group], size)
        if region is None:
            continue  # the boxes lie outside the image: nothing to paste
        pasted = _paste_region(masks[group], boxes[group], *region)
        planes[group, region[1], region[0]] = (pasted >= threshold).transpose(1, 2)
    return planes.transpose(1, 2)


def roi_mask_chunks(masks: torch.Tensor, boxes: torch.Tensor, *, output_size: Size,
                    threshold: float = 0.5, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                    guard: OOMGuard | None = None) -> MaskChunks:
    """Binary masks at ``output_size`` from ``(N, M, M)`` probabilities inside ``boxes``.

    Args:
        masks: per-box probabilities in [0, 1] (``ROIMasks.tensor``).
        boxes: ``(N, 4)`` XYXY boxes in output-image pixels (``pred_boxes.tensor``).
        output_size: ``(height, width)`` of the original image.
        threshold: foreground where the pasted probability is ``>= threshold`` (detectron2's
            rule); must be >= 0.5 for the bounded paste region to be exact.
        chunk_bytes: memory budget of one chunk's temporaries.
        guard: CUDA OOM recovery shared by an evaluation (a fresh one if not given).

    Returns:
        ``(slice, bool (n, H, W))`` chunks in order, on the device that computed them.
    """
    if masks.dim() != 3 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"need (N, M, M) masks and (N, 4) boxes, got {tuple(masks.shape)} "
                         f"and {tuple(boxes.shape)}")
    size = (int(output_size[0]), int(output_size[1]))
    per_instance = _float_mask_bytes(size, torch.float32) * _ROI_TEMPORARIES
    op = functools.partial(_paste_chunk, size=size, threshold=threshold)
    return _run_chunks(op, (masks, boxes), size=size, chunk_bytes=chunk_bytes, guard=guard,
                       per_chunk=chunk_size(chunk_bytes, per_instance))


def dense_mask_chunks(masks: torch.Tensor, *,
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> MaskChunks:
    """Chunks of already full-size ``(N, H, W)`` masks (detectron2's dense ``pred_masks``),
    on CPU as uint8, cast as detectron2's COCO export casts them."""
    per_chunk = chunk_size(chunk_bytes, 2 * masks.shape[1] * masks.shape[2])
    for chunk in _chunks(masks.shape[0], per_chunk):
        yield chunk, _column_major(masks[chunk].to("cpu", torch.uint8))


def encode_rles(chunks: Iterable[tuple[slice, torch.Tensor]]) -> list[dict[str, Any]]:
    """COCO RLEs (``counts`` as str, json-ready) of every instance, one chunk at a time."""
    rles: list[dict[str, Any]] = []
    for _, masks in chunks:
        planes = masks.cpu()
        if planes.dtype == torch.bool:
            planes = planes.view(torch.uint8)
        # (n, H, W) column-major planes are an (H, W, n) Fortran array: no copy here.
        for rle in mask_util.encode(np.asfortranarray(planes.numpy().transpose(1, 2, 0))):
            rle["counts"] = rle["counts"].decode("utf-8")
            rles.append(rle)
    return rles


def collect_bitmasks(chunks: Iterable[tuple[slice, torch.Tensor]], num: int, output_size: Size,
                     *, device: torch.device | str = "cpu") -> torch.Tensor:
    """All chunks in one bool ``(num, H, W)`` tensor on ``device``, allocated once."""
    out = torch.zeros((num, int(output_size[0]), int(output_size[1])), dtype=torch.bool,
                      device=device)
    for chunk, masks in chunks:
        out[chunk] = masks.to(device)
    return out
