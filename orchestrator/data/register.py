"""Register resolved datasets with detectron2's catalogs inside a worker.

A panoptic dataset is registered in the "separated" form Panoptic FPN trains on: the thing
instances from the instances json (category ids made contiguous 0..T-1) and, per image, a
``sem_seg_file_name``: its stuff map, ``sem_seg_root / <panoptic annotation file_name>``
(0 things, 1..S stuff in category order, 255 ignore). detectron2's own
``register_coco_panoptic_separated`` pairs the stuff maps with the images by a ``.jpg`` file
stem and keeps an extra ``0 -> 0`` stuff id, so we register with the public catalogs and
``load_coco_json`` instead; detectron2's built-in ``coco_2017_*_panoptic_separated`` entries
are replaced by ours (same files, the contract's metadata, and the stuff maps pre-flight
found or derived).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from orchestrator.data.catalog import ResolvedData, ResolvedDataset
from orchestrator.data.panoptic import IGNORE_LABEL, PanopticIndex, panoptic_index

__all__ = ["register_dataset", "register_datasets", "register_panoptic", "panoptic_metadata",
           "panoptic_dicts"]

_SAME_FILES = ("json_file", "panoptic_json", "sem_seg_root")


def register_dataset(ds: ResolvedDataset) -> None:
    """Register a COCO json under ``ds.name`` unless detectron2 already knows that name.

    detectron2's built-in names (``coco_2017_train``) are registered at import time; a name
    registered earlier in this process with other files is an error, not a silent reuse.
    """
    if ds.panoptic:
        register_panoptic(ds)
        return
    if ds.name in DatasetCatalog.list():
        known = MetadataCatalog.get(ds.name).get("json_file", ds.json_file)
        if not ds.builtin and known != ds.json_file:
            raise ValueError(f"dataset name '{ds.name}' is registered with {known}, "
                             f"not {ds.json_file}")
        return
    register_coco_instances(ds.name, {}, ds.json_file, ds.image_root)


def panoptic_metadata(ds: ResolvedDataset, index: PanopticIndex) -> dict[str, Any]:
    """The contract's metadata: classes from the panoptic json's categories (things sorted
    by id, as ``load_coco_json`` orders them; stuff in list order, as ``semantic_ids``)."""
    things = sorted((c for c in index.categories if c["isthing"]), key=lambda c: c["id"])
    stuff = [c for c in index.categories if not c["isthing"]]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_classes": ["things", *(c["name"] for c in stuff)],
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(stuff, 1)},
        "json_file": ds.json_file, "image_root": ds.image_root,
        "panoptic_root": ds.panoptic_root, "panoptic_json": ds.panoptic_json,
        "sem_seg_root": ds.sem_seg_root, "ignore_label": IGNORE_LABEL,
    }


def panoptic_dicts(ds: ResolvedDataset, index: PanopticIndex,
                   thing_ids: dict[int, int]) -> list[dict[str, Any]]:
    """detectron2 dataset dicts of the instances json, thing ids made contiguous, each with
    its stuff map's path."""
    dicts = load_coco_json(ds.json_file, ds.image_root)  # no name: ids stay the dataset's
    for record in dicts:
        name = index.file_names.get(record["image_id"])
        if name is None:
            raise ValueError(f"{ds.panoptic_json}: no panoptic annotation for image_id "
                             f"{record['image_id']} ({record['file_name']})")
        record["sem_seg_file_name"] = str(Path(str(ds.sem_seg_root)) / name)
        for annotation in record.get("annotations", []):
            annotation["category_id"] = thing_ids[annotation["category_id"]]
    return dicts


def _registered_files(name: str) -> dict[str, Any]:
    metadata = MetadataCatalog.get(name)
    return {key: metadata.get(key, None) for key in _SAME_FILES}


def register_panoptic(ds: ResolvedDataset) -> None:
    """Register ``ds`` in the separated form, replacing a built-in entry of that name."""
    if ds.name in DatasetCatalog.list():
        if _registered_files(ds.name) == {k: getattr(ds, k) for k in _SAME_FILES}:
            return
        if not ds.builtin:
            raise ValueError(f"dataset name '{ds.name}' is registered with other files: "
                             f"{_registered_files(ds.name)}")
        DatasetCatalog.remove(ds.name)
        MetadataCatalog.remove(ds.name)
    index = panoptic_index(Path(str(ds.panoptic_json)))
    metadata = panoptic_metadata(ds, index)
    thing_ids = metadata["thing_dataset_id_to_contiguous_id"]
    DatasetCatalog.register(ds.name, lambda: panoptic_dicts(ds, index, thing_ids))
    MetadataCatalog.get(ds.name).set(**metadata)


def register_datasets(data: ResolvedData) -> None:
    """Register train and test sets (no-op for names already registered)."""
    register_dataset(data.train)
    if data.test is not None:
        register_dataset(data.test)
