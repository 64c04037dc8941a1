"""COCO evaluation that never holds dense masks: predictions become RLE records per image.

Why it exists: detectron2's ``COCOEvaluator`` already stores RLEs, but only for masks the model
has already expanded to full resolution. Models that defer that expansion (see the mask
convention in ``orchestrator.evaluation``) get it done here, chunked, inside ``process()``;
dense ``pred_masks`` (Mask R-CNN) are encoded exactly as detectron2 encodes them. Metrics
come from detectron2's own ``evaluate()`` with pycocotools (``use_fast_impl=False``).
"""

from __future__ import annotations

from typing import Any

import torch
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances, ROIMasks

from orchestrator.evaluation.oom import OOMGuard
from orchestrator.evaluation.postprocess import (
    DEFAULT_CHUNK_BYTES,
    MaskChunks,
    dense_mask_chunks,
    encode_rles,
    global_mask_chunks,
    roi_mask_chunks,
)
from orchestrator.evaluation.structures import GlobalMasks

__all__ = ["ChunkedCOCOEvaluator", "instances_to_coco_records", "MASK_FIELDS"]

MASK_FIELDS = ("pred_masks", "pred_global_masks")


def _mask_chunks(instances: Instances, *, chunk_bytes: int, threshold: float,
                 guard: OOMGuard) -> MaskChunks | None:
    """The chunked postprocess that fits how ``instances`` carries its masks, if it does."""
    size = (int(instances.image_size[0]), int(instances.image_size[1]))
    if instances.has("pred_global_masks"):
        masks: GlobalMasks = instances.pred_global_masks
        return global_mask_chunks(masks.tensor, stride=masks.stride, input_size=masks.input_size,
                                  output_size=size, threshold=threshold,
                                  chunk_bytes=chunk_bytes, guard=guard)
    if not instances.has("pred_masks"):
        return None
    if isinstance(instances.pred_masks, ROIMasks):
        # detectron2 pastes ROI masks with a fixed 0.5, whatever the evaluator's threshold.
        return roi_mask_chunks(instances.pred_masks.tensor, instances.pred_boxes.tensor,
                               output_size=size, chunk_bytes=chunk_bytes, guard=guard)
    return dense_mask_chunks(instances.pred_masks, chunk_bytes=chunk_bytes)


def instances_to_coco_records(instances: Instances, img_id: int, *,
                              chunk_bytes: int = DEFAULT_CHUNK_BYTES, threshold: float = 0.5,
                              guard: OOMGuard | None = None) -> list[dict[str, Any]]:
    """detectron2's ``instances_to_coco_json``, with masks encoded chunk by chunk.

    Boxes, scores and classes go through detectron2's function unchanged; the masks (any
    field of ``MASK_FIELDS``) are left where they are and encoded to RLE by the chunked path.
    """
    chunks = _mask_chunks(instances, chunk_bytes=chunk_bytes, threshold=threshold,
                          guard=guard if guard is not None else OOMGuard())
    rles = encode_rles(chunks) if chunks is not None else None
    fields = {k: v for k, v in instances.get_fields().items() if k not in MASK_FIELDS}
    records: list[dict[str, Any]] = instances_to_coco_json(
        Instances(instances.image_size, **fields).to("cpu"), img_id)
    if rles is not None:
        for record, rle in zip(records, rles, strict=True):
            record["segmentation"] = rle
    return records


class ChunkedCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` (pycocotools, not the C++ fast path) whose ``process()`` keeps only
    COCO records with RLE masks, expanding deferred masks chunk by chunk.

    Args:
        dataset_name: a registered dataset with COCO json metadata.
        output_dir: where detectron2 writes its predictions and results files (None: nowhere).
        distributed: gather predictions from all ranks and evaluate on rank 0.
        chunk_bytes: memory budget of one mask-postprocess chunk.
        cpu_fallback: run a chunk on CPU when CUDA runs out of memory even after a retry.
        mask_threshold: foreground threshold of ``GlobalMasks`` (``> threshold``).
        max_dets_per_image: as in ``COCOEvaluator`` (None: COCO's 100).
    """

    def __init__(self, dataset_name: str, *, output_dir: str | None = None,
                 distributed: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 cpu_fallback: bool = True, mask_threshold: float = 0.5,
                 max_dets_per_image: int | None = None) -> None:
        self._chunk_bytes = chunk_bytes
        self._cpu_fallback = cpu_fallback
        self._mask_threshold = mask_threshold
        self._guard = OOMGuard(cpu_fallback=cpu_fallback)
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir,
                         max_dets_per_image=max_dets_per_image, use_fast_impl=False)

    def reset(self) -> None:
        super().reset()
        self._guard = OOMGuard(cpu_fallback=self._cpu_fallback)  # logs once per evaluation

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, output in zip(inputs, outputs, strict=True):
            prediction: dict[str, Any] = {"image_id": inp["image_id"]}
            if "instances" in output:
                prediction["instances"] = instances_to_coco_records(
                    output["instances"], inp["image_id"], chunk_bytes=self._chunk_bytes,
                    threshold=self._mask_threshold, guard=self._guard)
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to(torch.device("cpu"))
            if len(prediction) > 1:
                self._predictions.append(prediction)
