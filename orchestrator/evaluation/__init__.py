"""OOM-safe instance-segmentation evaluation (torch, detectron2 and pycocotools only).

Mask convention for a model's output ``Instances`` (already at the original image size, i.e.
``image_size`` is the requested ``(height, width)`` and ``pred_boxes`` are in its pixels):

* ``pred_masks`` as a dense ``(N, H, W)`` tensor (bool, or 0/1): detectron2's usual output
  (Mask R-CNN via ``detector_postprocess``); encoded to RLE as detectron2 does.
* ``pred_masks`` as a detectron2 ``ROIMasks`` of ``(N, M, M)`` probabilities in
  ``pred_boxes`` (BlendMask, or Mask R-CNN without pasting): pasted here with
  ``paste_masks_in_image`` semantics, a bounded chunk at a time.
* ``pred_global_masks`` as a ``GlobalMasks`` (``(N, h, w)`` probabilities over the padded
  input at ``stride``, plus the un-padded ``input_size``; CondInst): expanded here with
  CondInst's postprocess (aligned_bilinear, crop, bilinear resize, ``> threshold``), a bounded
  chunk at a time. Takes precedence over ``pred_masks``.

The evaluator never holds more than one chunk of full-resolution masks and keeps RLEs only;
it scores them with ``scoring`` (faster-coco-eval, pycocotools' numbers) and reports its
progress to an ``EvalProgress``.

Panoptic datasets add ``PanopticEvaluator`` (PQ/SQ/RQ and the semantic head's mIoU, counted
image by image; ``panoptic_evaluator``).
"""

from orchestrator.evaluation.evaluator import ChunkedCOCOEvaluator, instances_to_coco_records
from orchestrator.evaluation.oom import OOMGuard
from orchestrator.evaluation.panoptic_evaluator import PanopticEvaluator, is_panoptic
from orchestrator.evaluation.postprocess import (
    DEFAULT_CHUNK_BYTES,
    aligned_bilinear,
    chunk_size,
    collect_bitmasks,
    dense_mask_chunks,
    encode_rles,
    global_mask_chunks,
    roi_mask_chunks,
)
from orchestrator.evaluation.progress import EvalProgress
from orchestrator.evaluation.structures import GlobalMasks

__all__ = [
    "ChunkedCOCOEvaluator",
    "DEFAULT_CHUNK_BYTES",
    "EvalProgress",
    "GlobalMasks",
    "OOMGuard",
    "PanopticEvaluator",
    "aligned_bilinear",
    "chunk_size",
    "collect_bitmasks",
    "dense_mask_chunks",
    "encode_rles",
    "global_mask_chunks",
    "instances_to_coco_records",
    "is_panoptic",
    "roi_mask_chunks",
]
