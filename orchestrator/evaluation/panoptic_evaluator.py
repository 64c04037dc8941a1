"""PQ, SQ, RQ and stuff mIoU of a panoptic dataset, counted inside detectron2's evaluation loop.

Why not detectron2's ``COCOPanopticEvaluator``: it keeps every prediction's PNG until the end
and scores the folder with panopticapi. Here ``process()`` scores each image as it comes
(``orchestrator.evaluation.panoptic_quality``) and keeps a few numbers per category, so memory
does not grow with the dataset; ``evaluate()`` gathers those counts from every rank.

Model output (issue 22 contract, section 3; detectron2's PanopticFPN convention):
``"panoptic_seg"`` = ``(ids, segments_info)``, ``ids`` an ``(H, W)`` int map at the image's
size (0 = no segment), each segment ``{"id", "isthing", "category_id", "area"}`` with the thing
class 0..T-1 or the stuff label 1..S as ``category_id``; ``"sem_seg_labels"`` the semantic
head's ``(H, W)`` labels (0 = things, 1..S stuff). A model that returns float ``"sem_seg"``
logits instead (detectron2's own PanopticFPN) is scored on their argmax.

The predictions can also be written in COCO panoptic format (json + PNGs) with the dataset's
category ids, e.g. to score them with another tool.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image
from tabulate import tabulate

from orchestrator.data.fix import write_json_atomic
from orchestrator.data.panoptic import (
    IGNORE_LABEL,
    read_panoptic_png,
    semantic_map,
    write_panoptic_png,
)
from orchestrator.evaluation.panoptic_quality import PanopticQuality, SemanticIoU

__all__ = ["PanopticEvaluator", "is_panoptic", "panoptic_annotation", "segment_extents",
           "PREDICTIONS_JSON", "PREDICTIONS_DIR"]

logger = logging.getLogger(__name__)

PREDICTIONS_JSON = "panoptic_predictions.json"
PREDICTIONS_DIR = "panoptic_predictions"
_COMPACT_ABOVE = 4096  # ids beyond this are renumbered before the per-id tables are built

Segments = Sequence[Mapping[str, Any]]


def is_panoptic(dataset_name: str) -> bool:
    """A registered dataset is panoptic iff its metadata names a panoptic json (contract 1)."""
    return bool(MetadataCatalog.get(dataset_name).get("panoptic_json"))


def segment_extents(ids: npt.ArrayLike) -> dict[int, tuple[int, list[int]]]:
    """Area and XYWH box (panopticapi's: inclusive, ``w = x_max - x_min + 1``) of every
    non-zero id, from one pass per table instead of one boolean mask per segment: at
    4000 x 3000 with a hundred segments that is the difference between seconds and minutes."""
    array = np.asarray(ids).astype(np.int64, copy=False)
    height, width = array.shape
    if array.size and int(array.max()) >= _COMPACT_ABOVE:
        values, inverse = np.unique(array, return_inverse=True)
        index = inverse.reshape(array.shape)
    else:
        values = np.arange(int(array.max(initial=0)) + 1)
        index = array
    area = np.bincount(index.ravel(), minlength=len(values))
    rows = np.zeros((len(values), height), dtype=bool)
    cols = np.zeros((len(values), width), dtype=bool)
    rows[index, np.arange(height)[:, None]] = True
    cols[index, np.arange(width)[None, :]] = True
    extents = {}
    for k, value in enumerate(values.tolist()):
        if value == 0 or area[k] == 0:
            continue
        y = np.flatnonzero(rows[k])
        x = np.flatnonzero(cols[k])
        extents[value] = (int(area[k]), [int(x[0]), int(y[0]), int(x[-1] - x[0] + 1),
                                         int(y[-1] - y[0] + 1)])
    return extents


def panoptic_annotation(image_id: int, file_name: str, ids: npt.ArrayLike, segments: Segments,
                        category_of: Callable[[Mapping[str, Any]], int]) -> dict[str, Any]:
    """One COCO panoptic ``annotations`` entry for an id map and its segments.

    ``category_of`` gives each segment's exported category id. Area and box come from the
    map; a listed segment without a pixel is left out (a reader would reject it).

    Raises:
        ValueError: the map has an id no segment lists.
    """
    extents = segment_extents(ids)
    listed = {int(s["id"]) for s in segments}
    unlisted = sorted(set(extents) - listed)
    if unlisted:
        raise ValueError(f"image {image_id}: ids {unlisted} are in the panoptic map but not in "
                         "its segments_info")
    info = [{"id": int(s["id"]), "category_id": int(category_of(s)), "iscrowd": 0,
             "area": extents[int(s["id"])][0], "bbox": extents[int(s["id"])][1]}
            for s in segments if int(s["id"]) in extents]
    return {"image_id": image_id, "file_name": file_name, "segments_info": info}


def _to_numpy(value: Any) -> npt.NDArray[Any]:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _semantic_labels(output: Mapping[str, Any]) -> npt.NDArray[Any] | None:
    """The semantic head's labels: ``sem_seg_labels``, else the argmax of ``sem_seg`` logits."""
    if "sem_seg_labels" in output:
        return _to_numpy(output["sem_seg_labels"])
    if "sem_seg" in output:
        return _to_numpy(output["sem_seg"].argmax(dim=0))
    return None


@dataclass
class _State:
    """What one rank accumulated: counts only (plus segment lists when exporting)."""

    quality: PanopticQuality
    semantic: SemanticIoU
    images: int = 0
    semantic_images: int = 0
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, other: _State) -> None:
        self.quality.merge(other.quality)
        self.semantic.merge(other.semantic)
        self.images += other.images
        self.semantic_images += other.semantic_images
        self.annotations.extend(other.annotations)


class PanopticEvaluator(DatasetEvaluator):
    """PQ/SQ/RQ (all, things, stuff) and the semantic head's mIoU of a panoptic dataset.

    ``evaluate()`` returns, on rank 0, detectron2's names in percent::

        {"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st",
                          "RQ_st"},
         "sem_seg": {"mIoU", "mIoU_stuff"}}

    ``mIoU`` is over all S + 1 classes of the semantic head, "things" (0) included, as
    detectron2's ``SemSegEvaluator`` reports it for panoptic FPN, so runs compare with its
    numbers; ``mIoU_stuff`` leaves class 0 out (the stuff classes alone). ``sem_seg`` is
    absent when the model gives no semantic labels.

    Args:
        dataset_name: a registered panoptic dataset (metadata with ``panoptic_json``).
        distributed: gather every rank's counts on rank 0.
        output_dir: where to write the predictions in COCO panoptic format (None: nowhere).
    """

    def __init__(self, dataset_name: str, *, distributed: bool = True,
                 output_dir: str | None = None) -> None:
        self._dataset_name = dataset_name
        self._meta = MetadataCatalog.get(dataset_name)
        if not self._meta.get("panoptic_json"):
            raise ValueError(f"{dataset_name} is not a panoptic dataset: its metadata has no "
                             "panoptic_json")
        self._distributed = distributed
        self._output_dir = Path(output_dir) if output_dir else None
        self._ground_truth: dict[str, Any] | None = None  # the panoptic json, read once
        self._by_image: dict[int, dict[str, Any]] = {}
        self.reset()

    def reset(self) -> None:
        # Read here, not in __init__: loading a dataset (the test loader, built before the
        # evaluation starts) is what fills some of its metadata in detectron2.
        self._things = _reverse(self._meta.get("thing_dataset_id_to_contiguous_id") or {})
        self._stuff = _reverse(self._meta.get("stuff_dataset_id_to_contiguous_id") or {})
        self._stuff.pop(0, None)  # 0 is "things" in the semantic map, never a stuff segment
        self._ignore = int(self._meta.get("ignore_label", IGNORE_LABEL))
        self._state = self._empty_state()

    def _empty_state(self) -> _State:
        classes = len(self._meta.get("stuff_classes") or ()) or max(self._stuff, default=0) + 1
        return _State(PanopticQuality(), SemanticIoU(classes, ignore_label=self._ignore))

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, output in zip(inputs, outputs, strict=True):
            if "panoptic_seg" in output:
                self._process_one(int(inp["image_id"]), output)

    def _process_one(self, image_id: int, output: Mapping[str, Any]) -> None:
        """Score one image against its ground-truth PNG; nothing of the prediction is kept
        but its counts (and, when exporting, its segment list)."""
        ids, segments = output["panoptic_seg"]
        ids = _to_numpy(ids)
        segments = [{**s, "category_id": self._dataset_category(s)} for s in segments]
        annotation = self._annotation(image_id)
        gt_ids = read_panoptic_png(Path(self._meta.panoptic_root) / annotation["file_name"])
        self._state.quality.add(gt_ids, annotation["segments_info"], ids, segments)
        self._state.images += 1
        labels = _semantic_labels(output)
        if labels is not None:
            self._state.semantic.add(self._stuff_map(annotation, gt_ids), labels)
            self._state.semantic_images += 1
        if self._output_dir is not None:
            self._export(image_id, annotation["file_name"], ids, segments)

    def _dataset_category(self, segment: Mapping[str, Any]) -> int:
        """Model class (thing 0..T-1, stuff 1..S) -> the dataset's category id."""
        table, kind = (self._things, "thing") if segment["isthing"] else (self._stuff, "stuff")
        category = int(segment["category_id"])
        if category not in table:
            raise ValueError(
                f"a predicted {kind} segment has class {category}, but {self._dataset_name} "
                f"has {kind} classes {sorted(table)}: the model's NUM_CLASSES (things) and "
                "SEM_SEG_HEAD.NUM_CLASSES (stuff + 1) must match the dataset")
        return table[category]

    def _stuff_map(self, annotation: Mapping[str, Any],
                   gt_ids: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The separated stuff map the semantic head trained on (``sem_seg_root``), or,
        without that folder, the same map derived from the ground-truth PNG by its rule."""
        root = self._meta.get("sem_seg_root")
        if root:
            with Image.open(Path(root) / annotation["file_name"]) as image:
                return np.asarray(image)
        mapping = {**dict.fromkeys(self._things.values(), 0),
                   **{d: c for c, d in self._stuff.items()}}
        return semantic_map(gt_ids, annotation["segments_info"], mapping,
                            where=annotation["file_name"])

    def _panoptic_json(self) -> dict[str, Any]:
        """The ground-truth json, read once (on rank 0 also when it scored no image)."""
        if self._ground_truth is None:
            self._ground_truth = _read_json(Path(self._meta.panoptic_json))
            self._by_image = {int(a["image_id"]): a for a in self._ground_truth["annotations"]}
        return self._ground_truth

    def _annotation(self, image_id: int) -> dict[str, Any]:
        self._panoptic_json()
        if image_id not in self._by_image:
            raise ValueError(f"image {image_id} has no annotation in "
                             f"{self._meta.panoptic_json}")
        return self._by_image[image_id]

    def _export(self, image_id: int, file_name: str, ids: npt.NDArray[Any],
                segments: Segments) -> None:
        assert self._output_dir is not None
        folder = self._output_dir / PREDICTIONS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        write_panoptic_png(folder / file_name, ids)
        self._state.annotations.append(panoptic_annotation(
            image_id, file_name, ids, segments, lambda s: int(s["category_id"])))

    def evaluate(self) -> dict[str, Any]:
        """Scores on rank 0 (``{}`` elsewhere, and when no output had ``panoptic_seg``)."""
        state = self._gathered()
        if state is None:
            return {}
        if self._output_dir is not None and state.images:
            self._save(state.annotations)
        if not state.images:
            logger.warning("no panoptic predictions to evaluate on %s", self._dataset_name)
            return {}
        summary = state.quality.summarize(self._categories())
        results: dict[str, Any] = {"panoptic_seg": summary.metrics()}
        if state.semantic_images:
            semantic = state.semantic.summarize()
            stuff = [v for v in semantic.iou[1:] if not math.isnan(v)]
            results["sem_seg"] = {"mIoU": semantic.miou,
                                  "mIoU_stuff": sum(stuff) / len(stuff) if stuff else math.nan}
        _log_results(summary, results, self._dataset_name)
        return results

    def _categories(self) -> list[dict[str, Any]]:
        return list(self._panoptic_json()["categories"])

    def _gathered(self) -> _State | None:
        """Every rank's counts merged on rank 0; None on the other ranks."""
        if not self._distributed:
            return self._state
        comm.synchronize()
        states = comm.gather(self._state, dst=0)
        if not comm.is_main_process():
            return None
        merged = self._empty_state()
        for state in states:
            merged.merge(state)
        return merged

    def merge(self, other: PanopticEvaluator) -> None:
        """Add the counts ``other`` accumulated (same dataset) to these, as the gather does:
        e.g. two evaluators that each saw part of the images."""
        self._state.merge(other._state)

    def _save(self, annotations: list[dict[str, Any]]) -> None:
        """``panoptic_predictions.json`` beside the PNG folder, with the dataset's images and
        categories (so panopticapi or our reader take it as is)."""
        assert self._output_dir is not None
        done = {a["image_id"] for a in annotations}
        document = {"images": [i for i in self._panoptic_json()["images"] if i["id"] in done],
                    "annotations": sorted(annotations, key=lambda a: a["image_id"]),
                    "categories": self._categories()}
        path = self._output_dir / PREDICTIONS_JSON
        write_json_atomic(path, document)
        logger.info("saved %d panoptic predictions to %s", len(annotations), path)


def _reverse(mapping: Mapping[int, int]) -> dict[int, int]:
    return {int(contiguous): int(dataset_id) for dataset_id, contiguous in mapping.items()}


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        document: dict[str, Any] = json.load(f)
    return document


def _log_results(summary: Any, results: Mapping[str, Any], dataset_name: str) -> None:
    """A small table like detectron2's ``COCOPanopticEvaluator`` prints."""
    rows = [[name, stats.pq, stats.sq, stats.rq, stats.n] for name, stats in
            (("All", summary.all), ("Things", summary.things), ("Stuff", summary.stuff))]
    table = tabulate(rows, headers=["", "PQ", "SQ", "RQ", "#categories"], tablefmt="pipe",
                     floatfmt=".3f", stralign="center", numalign="center")
    logger.info("Panoptic evaluation results on %s:\n%s", dataset_name, table)
    if "sem_seg" in results:
        logger.info("Semantic segmentation mIoU: %.3f (stuff only: %.3f)",
                    results["sem_seg"]["mIoU"], results["sem_seg"]["mIoU_stuff"])
