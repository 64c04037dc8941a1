"""Register resolved datasets with detectron2's catalogs inside a worker."""

from __future__ import annotations

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from orchestrator.data.catalog import ResolvedData, ResolvedDataset

__all__ = ["register_dataset", "register_datasets"]


def register_dataset(ds: ResolvedDataset) -> None:
    """Register a COCO json under ``ds.name`` unless detectron2 already knows that name.

    detectron2's built-in names (``coco_2017_train``) are registered at import time; a name
    registered earlier in this process with other files is an error, not a silent reuse.
    """
    if ds.name in DatasetCatalog.list():
        known = MetadataCatalog.get(ds.name).get("json_file", ds.json_file)
        if not ds.builtin and known != ds.json_file:
            raise ValueError(f"dataset name '{ds.name}' is registered with {known}, "
                             f"not {ds.json_file}")
        return
    register_coco_instances(ds.name, {}, ds.json_file, ds.image_root)


def register_datasets(data: ResolvedData) -> None:
    """Register train and test sets (no-op for names already registered)."""
    register_dataset(data.train)
    if data.test is not None:
        register_dataset(data.test)
