"""COCO evaluation that never holds dense masks: predictions become RLE records per image.

Why it exists: detectron2's ``COCOEvaluator`` already stores RLEs, but only for masks the model
has already expanded to full resolution. Models that defer that expansion (see the mask
convention in ``orchestrator.evaluation``) get it done here, chunked, inside ``process()``;
dense ``pred_masks`` (Mask R-CNN) are encoded exactly as detectron2 encodes them. Scoring is
``orchestrator.evaluation.scoring`` (faster-coco-eval: pycocotools' numbers in a fraction of its
time), with the results detectron2's ``evaluate()`` gives; progress goes to an ``EvalProgress``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
from typing import Any

from detectron2.data import MetadataCatalog
from detectron2.data.samplers import InferenceSampler
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances, ROIMasks
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from orchestrator.evaluation.oom import OOMGuard
from orchestrator.evaluation.postprocess import (
    DEFAULT_CHUNK_BYTES,
    MaskChunks,
    dense_mask_chunks,
    encode_rles,
    global_mask_chunks,
    roi_mask_chunks,
)
from orchestrator.evaluation.progress import EvalProgress
from orchestrator.evaluation.scoring import (
    METRICS,
    category_table,
    load_ground_truth,
    score_coco,
    tasks_of,
)
from orchestrator.evaluation.structures import GlobalMasks

__all__ = ["ChunkedCOCOEvaluator", "instances_to_coco_records", "MASK_FIELDS"]

MASK_FIELDS = ("pred_masks", "pred_global_masks")

logger = logging.getLogger(__name__)


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
    """``COCOEvaluator`` whose ``process()`` keeps only COCO records with RLE masks (expanding
    deferred masks chunk by chunk) and whose ``evaluate()`` scores them with faster-coco-eval.

    ``evaluate()`` does what detectron2's does with instance predictions: gathers every rank's
    records on rank 0, maps contiguous class ids back to the dataset's, writes
    ``coco_instances_results.json`` to ``output_dir``, logs the result tables and returns
    ``{"bbox": {...}, "segm": {...}}`` in percent. It does not evaluate box proposals or write
    ``instances_predictions.pth`` (the same records as the json).

    Args:
        dataset_name: a registered dataset with COCO json metadata.
        output_dir: where the predictions json goes (None: nowhere).
        distributed: gather predictions from all ranks and evaluate on rank 0.
        chunk_bytes: memory budget of one mask-postprocess chunk.
        cpu_fallback: run a chunk on CPU when CUDA runs out of memory even after a retry.
        mask_threshold: foreground threshold of ``GlobalMasks`` (``> threshold``).
        max_dets_per_image: as in ``COCOEvaluator`` (None: COCO's 100).
        progress: where images done, ETA and scoring time go (default: the log only).
    """

    def __init__(self, dataset_name: str, *, output_dir: str | None = None,
                 distributed: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 cpu_fallback: bool = True, mask_threshold: float = 0.5,
                 max_dets_per_image: int | None = None,
                 progress: EvalProgress | None = None) -> None:
        self._chunk_bytes = chunk_bytes
        self._cpu_fallback = cpu_fallback
        self._mask_threshold = mask_threshold
        self._guard = OOMGuard(cpu_fallback=cpu_fallback)
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir,
                         max_dets_per_image=max_dets_per_image, use_fast_impl=False)
        self._dataset_name = dataset_name
        self._out = output_dir
        self._gather = distributed
        self._max_dets = max_dets_per_image or 100
        self._ground_truth: Any = None  # loaded on rank 0 on first use, kept for later runs
        self._images: list[tuple[int, list[dict[str, Any]]]] = []
        self.progress = progress if progress is not None else EvalProgress()

    def reset(self) -> None:
        self._images = []
        self._guard = OOMGuard(cpu_fallback=self._cpu_fallback)  # logs once per evaluation
        self.progress.start(self._images_on_this_rank())

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, output in zip(inputs, outputs, strict=True):
            if "instances" in output:
                self._images.append((inp["image_id"], instances_to_coco_records(
                    output["instances"], inp["image_id"], chunk_bytes=self._chunk_bytes,
                    threshold=self._mask_threshold, guard=self._guard)))
        self.progress.advance(len(inputs))

    def evaluate(self, img_ids: list[int] | None = None) -> dict[str, Any]:
        """Scores on rank 0 (``{}`` elsewhere, and where nothing was predicted)."""
        images = self._gathered()
        if images is None:
            return {}
        results = self._score(images, img_ids) if images else {}
        if not images:
            logger.warning("no predictions to evaluate on %s", self._dataset_name)
        self.progress.finish()
        return results

    def _score(self, images: list[tuple[int, list[dict[str, Any]]]],
               img_ids: list[int] | None) -> dict[str, Any]:
        records = self._to_dataset_ids(list(itertools.chain(*(r for _, r in images))))
        if self._out:
            self._save(records, self._out)
        ground_truth = self._load_ground_truth()
        if "annotations" not in ground_truth.dataset:
            logger.info("%s has no annotations to evaluate against", self._dataset_name)
            return {}
        tasks = tasks_of(records)
        what = f"{len(images)} images, {len(records)} detections: {', '.join(tasks)}"
        with self.progress.scoring(what):
            results = score_coco(ground_truth, records, tasks=tasks, img_ids=img_ids,
                                 class_names=self._metadata_value("thing_classes"),
                                 max_dets_per_image=self._max_dets)
        _log_results(results)
        return results

    def _gathered(self) -> list[tuple[int, list[dict[str, Any]]]] | None:
        """Every rank's predictions on rank 0; None on the other ranks."""
        if not self._gather:
            return self._images
        comm.synchronize()
        gathered = comm.gather(self._images, dst=0)
        return list(itertools.chain(*gathered)) if comm.is_main_process() else None

    def _metadata_value(self, key: str) -> Any:
        return MetadataCatalog.get(self._dataset_name).get(key)

    def _load_ground_truth(self) -> Any:
        if self._ground_truth is None:
            json_file = PathManager.get_local_path(self._metadata_value("json_file"))
            self._ground_truth = load_ground_truth(json_file)
        return self._ground_truth

    def _images_on_this_rank(self) -> int | None:
        """Images rank 0's test loader yields (detectron2's ``InferenceSampler`` shard)."""
        if not comm.is_main_process():
            return None
        num_images = len(self._load_ground_truth().getImgIds())
        return sum(1 for _ in InferenceSampler(num_images)) if num_images else 0

    def _to_dataset_ids(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Model class indices back to the dataset's category ids, as detectron2 maps them."""
        mapping = self._metadata_value("thing_dataset_id_to_contiguous_id")
        if not mapping:
            return records
        reverse = {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}
        unknown = {r["category_id"] for r in records} - reverse.keys()
        if unknown:
            raise ValueError(
                f"predictions have class {min(unknown)}, but {self._dataset_name} has "
                f"{len(reverse)} classes (0..{len(reverse) - 1}): set the model's NUM_CLASSES "
                "to the dataset's number of classes")
        # New records: the gathered ones may be this rank's own, and evaluate() may run again.
        return [{**r, "category_id": reverse[r["category_id"]]} for r in records]

    def _save(self, records: list[dict[str, Any]], folder: str) -> None:
        """``coco_instances_results.json``, replaced whole (never left half-written)."""
        PathManager.mkdirs(folder)
        path = os.path.join(folder, "coco_instances_results.json")
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False,
                                         encoding="utf-8") as f:
            json.dump(records, f)
        os.replace(f.name, path)
        logger.info("saved %d predictions to %s", len(records), path)


def _log_results(results: dict[str, dict[str, float]]) -> None:
    for task, values in results.items():
        logger.info("Evaluation results for %s:\n%s", task,
                    create_small_table({k: values[k] for k in METRICS}))
        if any(k.startswith("AP-") for k in values):
            logger.info("Per-category %s AP:\n%s", task, category_table(values))
