"""Panoptic inference at any output size in bounded memory: semantic labels, then the combine.

Why it exists: detectron2's PanopticFPN resizes the semantic head's logits to the output image
(``sem_seg_postprocess``: C x H x W floats, 2.2 GB for 54 classes at 3648 x 2736) only to take
their argmax. ``semantic_labels`` computes the same argmax a chunk of classes at a time under a
byte budget, keeping the uint8 label map and a running maximum. ``combine_panoptic`` then
merges instances and stuff with detectron2's rule (``combine_semantic_and_instance_outputs``) in
a few H x W maps (int32 ids, bool free pixels, one or two bool temporaries): detectron2's own
version also sorts the label map (``torch.unique``, ~15 bytes a pixel) and sums bool masks as
int64 (8 bytes a pixel).

Bit-identical labels: the classes are resized a chunk at a time by ``F.interpolate`` itself
(bilinear works on each class plane alone), and a running maximum keeps the first class reaching
it, as ``argmax`` does. Bands of output rows would keep less (no full-size running maximum), but
a band resized apart gets other float rounding than the same rows of the whole image (PyTorch's
kernel fuses its row blend differently by path: measured), so labels would differ at near ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.structures import Instances
from torch import Tensor
from torch.nn import functional as F

from orchestrator.evaluation.postprocess import DEFAULT_CHUNK_BYTES, chunk_size

__all__ = ["PanopticCombine", "semantic_labels", "combine_panoptic"]

Size = tuple[int, int]

# Output planes at least this large resize alike in any chunk of classes (16 x 1 Mpx planes are
# 64 MiB: the budget is never overrun by much below it).
_SMALL_PLANE = 2**20


def _class_chunk(logits: Tensor, output_size: Size) -> Tensor:
    """Resized logits of some classes: ``sem_seg_postprocess``'s own interpolate."""
    return F.interpolate(logits[None], size=output_size, mode="bilinear", align_corners=False)[0]


def _classes_per_chunk(num_classes: int, size: Size, itemsize: int, chunk_bytes: int) -> int:
    """Classes resized together: as many as ``chunk_bytes`` holds, and on planes under
    ``_SMALL_PLANE`` pixels a multiple of 8 (PyTorch's CPU kernel computes small planes of
    classes outside 8-aligned groups differently, by an ulp: measured)."""
    pixels = size[0] * size[1]
    per_chunk = chunk_size(chunk_bytes, pixels * itemsize)
    if pixels < _SMALL_PLANE:
        return max(8, per_chunk // 8 * 8)
    return min(per_chunk, num_classes)


def semantic_labels(logits: Tensor, input_size: Size, output_size: Size, *,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    """``argmax(sem_seg_postprocess(logits, input_size, *output_size))`` as uint8, in chunks of
    classes whose resized float planes fit ``chunk_bytes``.

    Besides the chunk, it holds the labels (1 byte a pixel), the running maximum (4) and one
    bool comparison (1). A chunk has at least one class (8 on small planes).

    Args:
        logits: ``(C, Hp, Wp)`` semantic logits over the padded input (the head's output).
        input_size: un-padded input ``(height, width)``; the padding is cropped off.
        output_size: ``(height, width)`` of the labels (the original image).
        chunk_bytes: memory budget of the resized planes of one chunk of classes.
    """
    num_classes = logits.shape[0]
    if num_classes > 256:
        raise ValueError(f"uint8 labels hold at most 256 classes, got {num_classes}")
    cropped = logits[:, : int(input_size[0]), : int(input_size[1])]
    size = (int(output_size[0]), int(output_size[1]))
    labels = torch.zeros(size, dtype=torch.uint8, device=logits.device)
    best = torch.full(size, float("-inf"), dtype=logits.dtype, device=logits.device)
    per_chunk = _classes_per_chunk(num_classes, size, logits.element_size(), chunk_bytes)
    for first in range(0, num_classes, per_chunk):
        _keep_best(labels, best, _class_chunk(cropped[first : first + per_chunk], size), first)
    return labels


def _keep_best(labels: Tensor, best: Tensor, planes: Tensor, first: int) -> None:
    """Relabels the pixels where a class of ``planes`` beats ``best`` (strict: ties keep the
    earlier class, as argmax does). A function, so no plane outlives its chunk."""
    for offset, plane in enumerate(planes):
        better = plane > best
        labels.masked_fill_(better, first + offset)
        torch.maximum(best, plane, out=best)


def _add_instances(ids: Tensor, free: Tensor, instances: Instances, *, overlap_threshold: float,
                   score_threshold: float) -> list[dict[str, Any]]:
    """Paints instances by decreasing score onto ``ids`` (detectron2's rule); one bool
    temporary per instance."""
    segments: list[dict[str, Any]] = []
    for index in torch.argsort(-instances.scores).tolist():
        score = instances.scores[index].item()
        if score < score_threshold:
            break
        mask = instances.pred_masks[index].to(device=ids.device, dtype=torch.bool)
        area = int(torch.count_nonzero(mask))
        if area == 0:
            continue
        visible = mask & free
        kept = int(torch.count_nonzero(visible))
        if (area - kept) * 1.0 / area > overlap_threshold:
            continue
        segment_id = len(segments) + 1
        ids.masked_fill_(visible, segment_id)
        free.masked_fill_(visible, False)
        segments.append({"id": segment_id, "isthing": True, "score": score, "area": kept,
                         "category_id": int(instances.pred_classes[index]),
                         "instance_id": index})
    return segments


def _add_stuff(ids: Tensor, free: Tensor, labels: Tensor, first_id: int, *,
               area_limit: float) -> list[dict[str, Any]]:
    """Paints each stuff label (ascending) on the still free pixels if that area reaches
    ``area_limit``. Stuff labels are disjoint, so all their free areas come from one count."""
    flat = labels.reshape(-1)
    present = torch.bincount(flat, minlength=256)
    free_area = torch.bincount(labels.masked_fill(~free, 0).reshape(-1), minlength=256)
    segments: list[dict[str, Any]] = []
    for label in torch.nonzero(present[1:]).flatten().add(1).tolist():
        area = int(free_area[label])
        if area < area_limit:
            continue
        segment_id = first_id + len(segments)
        ids.masked_fill_((labels == label) & free, segment_id)
        segments.append({"id": segment_id, "isthing": False, "category_id": label,
                         "area": area})
    return segments


def combine_panoptic(instances: Instances, labels: Tensor, *, overlap_threshold: float,
                     stuff_area_limit: float,
                     instances_score_thresh: float) -> tuple[Tensor, list[dict[str, Any]]]:
    """detectron2's ``combine_semantic_and_instance_outputs`` in a few H x W maps.

    Same ``ids`` and segments (ids, order, fields); thing segments also carry their ``area``
    (pixels painted), as the panoptic contract asks.

    Args:
        instances: at the output size, with bool ``pred_masks`` (N, H, W), ``scores``,
            ``pred_classes``.
        labels: uint8 (H, W) semantic labels, 0 = things.
    """
    ids = torch.zeros(labels.shape, dtype=torch.int32, device=labels.device)
    free = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
    segments = _add_instances(ids, free, instances, overlap_threshold=overlap_threshold,
                              score_threshold=instances_score_thresh)
    segments += _add_stuff(ids, free, labels, len(segments) + 1, area_limit=stuff_area_limit)
    return ids, segments


@dataclass(frozen=True)
class PanopticCombine:
    """The panoptic outputs of one image from its instances and semantic logits (cfg-bound)."""

    overlap_threshold: float
    stuff_area_limit: float
    instances_score_thresh: float
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    @classmethod
    def from_config(cls, cfg: CfgNode) -> PanopticCombine:
        combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
        chunk = cfg.get("ORCHESTRATOR", {}).get("EVAL_CHUNK_BYTES", DEFAULT_CHUNK_BYTES)
        return cls(overlap_threshold=combine.OVERLAP_THRESH,
                   stuff_area_limit=combine.STUFF_AREA_LIMIT,
                   instances_score_thresh=combine.INSTANCES_CONFIDENCE_THRESH,
                   chunk_bytes=int(chunk))

    def __call__(self, instances: Instances, logits: Tensor, input_size: Size) -> dict[str, Any]:
        """``{"panoptic_seg": (int32 ids, segments_info), "sem_seg_labels": uint8}`` at
        ``instances.image_size`` from the head's ``(C, Hp, Wp)`` logits."""
        labels = semantic_labels(logits, input_size, instances.image_size,
                                 chunk_bytes=self.chunk_bytes)
        panoptic = combine_panoptic(instances, labels, overlap_threshold=self.overlap_threshold,
                                    stuff_area_limit=self.stuff_area_limit,
                                    instances_score_thresh=self.instances_score_thresh)
        return {"panoptic_seg": panoptic, "sem_seg_labels": labels}
