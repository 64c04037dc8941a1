"""Training datasets parsed once per node, kept in detectron2's compact serialized form.

Without this every worker process parses the COCO json itself (pycocotools index, then a list of
dicts, then ``DatasetFromList`` pickles each dict into one byte buffer): on COCO 2017 that is
tens of seconds and gigabytes per worker, repeated by every submit. Here the first worker of a
node to need a dataset builds that byte buffer (and its offsets) into a cache folder keyed by the
content of the json files and the filter settings; the others wait for it (a file lock) and
memory-map it, so their pages are shared through the page cache and a second submit only maps
files. Large files are parsed in a short-lived child process, whose memory goes back to the OS
when it exits, so no worker keeps the parser's peak.

Each folder ends with a record of its files' sizes and checksums (``orchestrator.integrity``),
written last and checked whenever the folder is used: a cut, garbled or half-written entry
(a full disk, a killed build, a damaged copy) is rebuilt with a warning instead of failing
every later submit.

``ORCHESTRATOR_DATA_CACHE`` names the cache folder (default: ``<tmp>/orchestrator-data-cache``,
one per node); ``off`` turns caching off (detectron2's own loading then).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from orchestrator.integrity import (
    digest,
    file_record,
    locked,
    read_record,
    record_problem,
    write_record,
)

__all__ = [
    "CacheSource",
    "SerializedDataset",
    "cache_root",
    "cache_key",
    "cached_dataset",
    "cached_train_dataset",
]

logger = logging.getLogger(__name__)

FORMAT = 2  # bump when the stored layout or the dicts' content changes
CHILD_PARSE_BYTES = 32 * 2**20  # json files at least this large are parsed in a child process
_DATA, _ADDR, _META = "data.bin", "addr.npy", "meta.json"
_RECORD = "complete.json"  # the files' sizes and checksums, written last


@dataclass(frozen=True)
class CacheSource:
    """One COCO instances file as detectron2 registers it, and the filters applied to it."""

    json_file: str
    image_root: str


def cache_root() -> Path | None:
    """The node's cache folder, or None when caching is off."""
    configured = os.environ.get("ORCHESTRATOR_DATA_CACHE", "")
    if configured.lower() in {"off", "0", "false", "no"}:
        return None
    return Path(configured) if configured else Path(tempfile.gettempdir()) / (
        "orchestrator-data-cache")


def cache_key(sources: Sequence[CacheSource], *, filter_empty: bool) -> str:
    """Content hash: the json bytes (not their path or mtime), image roots, filters, format."""
    import detectron2

    parts = [f"format={FORMAT}", f"detectron2={detectron2.__version__}",
             f"filter_empty={filter_empty}"]
    for source in sources:
        parts += [digest(Path(source.json_file)), source.image_root]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


class SerializedDataset(torch.utils.data.Dataset):
    """Dataset dicts read from a cache folder: one byte buffer of pickled dicts and their end
    offsets (``DatasetFromList``'s serialized form), memory-mapped, so processes on a node
    share the pages instead of each holding a copy."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._addr = np.load(self.folder / _ADDR, mmap_mode="r")
        size = (self.folder / _DATA).stat().st_size
        self._data = np.memmap(self.folder / _DATA, dtype=np.uint8, mode="r",
                               shape=(size,)) if size else np.zeros(0, np.uint8)
        self.meta: dict[str, Any] = json.loads((self.folder / _META).read_text("utf-8"))

    def __len__(self) -> int:
        return len(self._addr)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = 0 if index == 0 else int(self._addr[index - 1])
        end = int(self._addr[index])
        record: dict[str, Any] = pickle.loads(self._data[start:end].tobytes())  # one record
        return record

    def __reduce__(self) -> tuple[Any, ...]:  # data loader workers re-map, never copy
        return (SerializedDataset, (self.folder,))


def _write(folder: Path, dicts: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    """The serialized form, written one dict at a time (no second copy in memory)."""
    ends = np.empty(len(dicts), dtype=np.int64)
    offset = 0
    with open(folder / _DATA, "wb") as out:
        for i, record in enumerate(dicts):
            blob = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
            out.write(blob)
            offset += len(blob)
            ends[i] = offset
    np.save(folder / _ADDR, ends)
    (folder / _META).write_text(json.dumps({**meta, "count": len(dicts)}), "utf-8")
    write_record(folder / _RECORD, {"format": FORMAT,
                                    "files": file_record(folder, (_DATA, _ADDR, _META))})


def _parse(sources: Sequence[CacheSource], filter_empty: bool) -> tuple[list[Any], dict[str, Any]]:
    """detectron2's own loading (``load_coco_json``, then its empty-image filter): the cache
    holds exactly the dicts training would otherwise get."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.build import filter_images_with_only_crowd_annotations
    from detectron2.data.datasets import load_coco_json

    dicts: list[Any] = []
    meta: dict[str, Any] = {}
    for source in sources:
        # load_coco_json fills this name's metadata; a fresh name per parse (removed after)
        # keeps two datasets parsed in one process from meeting in detectron2's catalog.
        name = f"_orchestrator_cache_{uuid.uuid4().hex}"
        try:
            dicts += load_coco_json(source.json_file, source.image_root, name)
            found = MetadataCatalog.get(name)
            if not meta and found.get("thing_classes") is not None:
                meta = {"thing_classes": list(found.thing_classes),
                        "thing_dataset_id_to_contiguous_id": {
                            str(k): v
                            for k, v in found.thing_dataset_id_to_contiguous_id.items()}}
        finally:
            MetadataCatalog.remove(name)
    if filter_empty and dicts and "annotations" in dicts[0]:
        dicts = filter_images_with_only_crowd_annotations(dicts)
    return dicts, meta


def _build(folder: Path, sources: Sequence[CacheSource], filter_empty: bool) -> None:
    """Parse and write into ``folder`` (in this process)."""
    folder.mkdir(parents=True)
    dicts, meta = _parse(sources, filter_empty)
    _write(folder, dicts, meta)


def _build_in_child(folder: Path, sources: Sequence[CacheSource], filter_empty: bool) -> None:
    """Parse in a fresh interpreter: the parser's peak memory leaves with it."""
    request = json.dumps({"folder": str(folder), "filter_empty": filter_empty,
                          "sources": [asdict(s) for s in sources]})
    result = subprocess.run([sys.executable, "-m", "orchestrator.data.cache", request],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"parsing {[s.json_file for s in sources]} failed:\n"
                           f"{result.stderr[-4000:]}")


def _damage(folder: Path) -> str | None:
    """Why ``folder`` cannot be used as written (None if it can)."""
    if not folder.exists():
        return "absent"
    record = read_record(folder / _RECORD)
    if record is None:
        return f"{_RECORD} is missing or unreadable (an unfinished build)"
    return record_problem(folder, record.get("files"))


def _rebuild(folder: Path, sources: Sequence[CacheSource], filter_empty: bool,
             child: bool | None) -> None:
    """Build into a staging folder, then rename it into place (the caller holds the lock, so
    staging folders left by killed builds are removed too)."""
    started = time.perf_counter()
    for stale in folder.parent.glob(f"{folder.name}.building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    staging = folder.with_name(f"{folder.name}.building-{os.getpid()}")
    size = sum(os.path.getsize(s.json_file) for s in sources)
    if child if child is not None else size >= CHILD_PARSE_BYTES:
        _build_in_child(staging, sources, filter_empty)
    else:
        _build(staging, sources, filter_empty)
    staging.rename(folder)
    logger.info("dataset cache %s built in %.1f s", folder, time.perf_counter() - started)


def cached_dataset(sources: Sequence[CacheSource], *, filter_empty: bool = True,
                   root: Path | None = None, child: bool | None = None) -> SerializedDataset:
    """The serialized dataset for ``sources``, built here if this node has none yet (or has
    a damaged one: cut, garbled or half-written; rebuilt with a warning).

    Args:
        root: cache folder (default ``cache_root()``).
        child: parse in a child process; by default when the json files are large.
    """
    root = root or cache_root()
    assert root is not None, "dataset caching is off"
    key = cache_key(sources, filter_empty=filter_empty)
    folder = root / key
    with locked(root / f"{key}.lock"):
        damage = _damage(folder)
        if damage is not None:
            if damage != "absent":
                logger.warning("dataset cache %s is damaged (%s): building it again", folder,
                               damage)
            _rebuild(folder, sources, filter_empty, child)
    return SerializedDataset(folder)


def _sources_of(names: Sequence[str]) -> list[CacheSource] | None:
    from detectron2.data import MetadataCatalog

    sources = []
    for name in names:
        meta = MetadataCatalog.get(name)
        if meta.get("panoptic_json"):  # the cache does not carry sem_seg_file_name
            return None
        json_file, image_root = meta.get("json_file"), meta.get("image_root")
        if not json_file or not image_root or not os.path.isfile(json_file):
            return None
        sources.append(CacheSource(json_file=str(json_file), image_root=str(image_root)))
    return sources


def _set_metadata(names: Sequence[str], meta: dict[str, Any]) -> None:
    """What ``load_coco_json`` would have put in the catalog (class names for artifacts and
    predict, the id map for evaluation), unless it is there already."""
    from detectron2.data import MetadataCatalog

    if "thing_classes" not in meta:
        return
    id_map = {int(k): v for k, v in meta["thing_dataset_id_to_contiguous_id"].items()}
    for name in names:
        found = MetadataCatalog.get(name)
        if found.get("thing_classes") is None:
            found.thing_classes = list(meta["thing_classes"])
        if found.get("thing_dataset_id_to_contiguous_id") is None:
            found.thing_dataset_id_to_contiguous_id = id_map


def cached_train_dataset(cfg: Any) -> SerializedDataset | None:
    """The training set of ``cfg`` from the node's cache, or None where detectron2's own
    loading must run (caching off, non-COCO datasets, panoptic datasets, proposals,
    keypoints, repeat-factor sampling: things the cache does not carry)."""
    if cache_root() is None:
        return None
    if (cfg.MODEL.LOAD_PROPOSALS or cfg.MODEL.KEYPOINT_ON or cfg.DATALOADER.SAMPLER_TRAIN
            not in {"TrainingSampler", "RandomSubsetTrainingSampler"}):
        return None
    names = list(cfg.DATASETS.TRAIN)
    sources = _sources_of(names) if names else None
    if sources is None:
        return None
    dataset = cached_dataset(sources, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    if len(dataset) == 0:
        raise ValueError(f"No valid data found in {','.join(names)}.")
    _set_metadata(names, dataset.meta)
    return dataset


def _main(request: str) -> None:
    """Child process entry: build one cache folder (see ``_build_in_child``)."""
    raw = json.loads(request)
    _build(Path(raw["folder"]), [CacheSource(**s) for s in raw["sources"]], raw["filter_empty"])


if __name__ == "__main__":
    _main(sys.argv[1])
