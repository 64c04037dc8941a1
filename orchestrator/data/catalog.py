"""Resolve a spec's ``data`` section into concrete COCO files, before any worker starts.

Driver side, pure Python: it finds (or generates) the json files and image folders, counts the
images that survive detectron2's empty-annotation filter (the epoch plan needs that count) and
reads the class names. Workers register the same files with detectron2 (``register.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.data import memo
from orchestrator.data.coco_stream import stream_coco
from orchestrator.errors import InputError
from orchestrator.spec import DatasetSpec, JobSpec

__all__ = [
    "ResolvedDataset",
    "ResolvedData",
    "KNOWN_DATASETS",
    "KNOWN_PANOPTIC",
    "resolve_data",
    "count_usable_images",
]

SUMMARY_VERSION = 1  # bump when the count or the class names are computed differently
# Registered detectron2 names we can locate on disk, relative to $DETECTRON2_DATASETS.
KNOWN_DATASETS: dict[str, tuple[str, str]] = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}
# detectron2's built-in "separated" panoptic names: (images, instances json, panoptic json,
# segment PNGs, stuff maps), as detectron2 and its prepare_panoptic_fpn.py lay COCO out.
KNOWN_PANOPTIC: dict[str, tuple[str, str, str, str, str]] = {
    f"coco_2017_{split}_panoptic_separated": (
        f"coco/{split}2017", f"coco/annotations/instances_{split}2017.json",
        f"coco/annotations/panoptic_{split}2017.json", f"coco/panoptic_{split}2017",
        f"coco/panoptic_stuff_{split}2017")
    for split in ("train", "val")
}


@dataclass(frozen=True, kw_only=True)
class ResolvedDataset:
    """A dataset as workers will register it: detectron2 name, json file, image folder.

    The panoptic fields are set for a panoptic dataset (COCO panoptic json, its folder of
    segment PNGs and the folder of "separated" stuff maps); None for an instances-only one.
    """

    name: str
    json_file: str
    image_root: str
    builtin: bool = False
    panoptic_json: str | None = None
    panoptic_root: str | None = None
    sem_seg_root: str | None = None

    @property
    def panoptic(self) -> bool:
        return self.panoptic_json is not None

    @property
    def exists(self) -> bool:
        return Path(self.json_file).is_file() and Path(self.image_root).is_dir()


@dataclass(frozen=True, kw_only=True)
class ResolvedData:
    """Train and optional test datasets, the usable train image count and the class names."""

    train: ResolvedDataset
    test: ResolvedDataset | None
    usable_images: int | None
    class_names: tuple[str, ...]
    stuff_names: tuple[str, ...] = ()  # panoptic data: stuff classes 1..S ("things" is 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ResolvedData:
        test = raw.get("test")
        return cls(
            train=ResolvedDataset(**raw["train"]),
            test=ResolvedDataset(**test) if test else None,
            usable_images=raw.get("usable_images"),
            class_names=tuple(raw["class_names"]),
            stuff_names=tuple(raw.get("stuff_names", ())),
        )


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read COCO json: {exc}") from None
    if not isinstance(raw, dict) or "images" not in raw or "annotations" not in raw:
        raise InputError(f"{path}: not a COCO instances file (needs 'images' and 'annotations')")
    return raw


def count_usable_images(coco: dict[str, Any]) -> int:
    """Images with at least one non-crowd annotation: what detectron2 keeps for training."""
    with_objects = {a["image_id"] for a in coco["annotations"] if not a.get("iscrowd", 0)}
    return _count_in(coco["images"], with_objects)


def _count_in(images: Any, with_objects: set[Any]) -> int:
    return sum(1 for img in images if img["id"] in with_objects)


def _read_summary(path: Path) -> tuple[int, tuple[str, ...]]:
    """Usable image count and class names, the annotations streamed one at a time
    (``coco_stream``); anything irregular is read the original way, for its exact error."""
    with_objects: set[Any] = set()
    irregular: list[bool] = []

    def each(ann: Any) -> None:
        try:
            if not ann.get("iscrowd", 0):
                with_objects.add(ann["image_id"])
        except (AttributeError, KeyError, TypeError):
            irregular.append(True)

    try:
        coco = stream_coco(path, each=each)
    except (OSError, ValueError):
        irregular.append(True)
    if irregular or coco.path is None:
        raw = _load_json(path)
        return count_usable_images(raw), _class_names(raw)
    if "images" not in coco.top or "annotations" not in coco.top:
        _load_json(path)  # raises its InputError
    return _count_in(coco.top["images"], with_objects), _class_names(coco.top)


def _summary(path: Path, checks: Path | None) -> tuple[int, tuple[str, ...]]:
    """``_read_summary``, kept in ``checks`` under the json's SHA-256 (``memo``)."""
    key = None
    if checks is not None:
        with contextlib.suppress(OSError):  # unreadable: _read_summary says so
            key = memo.entry_key("summary", {"version": SUMMARY_VERSION,
                                             "json_sha256": memo.file_digest(path)})
    stored, _ = memo.load_entry(checks, key) if checks and key else (None, None)
    if isinstance(stored, dict) and isinstance(stored.get("usable_images"), int) \
            and isinstance(stored.get("class_names"), list):
        return stored["usable_images"], tuple(stored["class_names"])
    usable, names = _read_summary(path)
    if checks is not None and key is not None:  # a damaged entry is simply replaced
        memo.store_entry(checks, key, {"usable_images": usable, "class_names": list(names)})
    return usable, names


def _class_names(coco: dict[str, Any]) -> tuple[str, ...]:
    """Category names in id order: detectron2 maps sorted ids to contiguous [0, K)."""
    return tuple(c["name"] for c in sorted(coco.get("categories", []), key=lambda c: c["id"]))


def _builtin(name: str) -> ResolvedDataset:
    """A detectron2 built-in name, located under ``$DETECTRON2_DATASETS`` as detectron2 does."""
    root = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")).resolve()
    if name in KNOWN_PANOPTIC:
        images, ann, pan_json, pan_root, stuff = (str(root / p) for p in KNOWN_PANOPTIC[name])
        return ResolvedDataset(name=name, json_file=ann, image_root=images, builtin=True,
                               panoptic_json=pan_json, panoptic_root=pan_root,
                               sem_seg_root=stuff)
    images, ann = KNOWN_DATASETS[name]
    return ResolvedDataset(name=name, json_file=str(root / ann), image_root=str(root / images),
                           builtin=True)


def _from_spec(ds: DatasetSpec, default_name: str, base: Path) -> ResolvedDataset:
    if ds.name and (ds.name in KNOWN_DATASETS or ds.name in KNOWN_PANOPTIC):
        return _builtin(ds.name)
    if ds.name:
        known = ", ".join([*KNOWN_DATASETS, *KNOWN_PANOPTIC])
        raise InputError(f"data: unknown dataset name '{ds.name}' (known: {known}); "
                         "or give json_file and image_root")
    assert ds.json_file is not None and ds.image_root is not None

    def absolute(path: Path | None) -> str | None:
        return None if path is None else str((base / path).resolve())

    return ResolvedDataset(name=default_name, json_file=str(absolute(ds.json_file)),
                           image_root=str(absolute(ds.image_root)),
                           panoptic_json=absolute(ds.panoptic_json),
                           panoptic_root=absolute(ds.panoptic_root),
                           sem_seg_root=absolute(ds.stuff_root))


def _check_exists(ds: ResolvedDataset, field: str) -> None:
    """The files a dataset is read from must be there; stuff maps may be derived later."""
    if not Path(ds.json_file).is_file():
        raise InputError(f"{field}: annotation file not found: {ds.json_file}")
    if not Path(ds.image_root).is_dir():
        raise InputError(f"{field}: image folder not found: {ds.image_root}")
    if ds.panoptic_json is not None and not Path(ds.panoptic_json).is_file():
        raise InputError(f"{field}.panoptic_json: panoptic json not found: {ds.panoptic_json}")
    if ds.panoptic_root is not None and not Path(ds.panoptic_root).is_dir():
        raise InputError(f"{field}.panoptic_root: folder of panoptic PNGs not found: "
                         f"{ds.panoptic_root}")


def _synthetic(spec: JobSpec, cache_root: Path, generate: bool) -> tuple[ResolvedDataset, ...]:
    from orchestrator.data import synth

    syn = spec.data.synthetic
    assert syn is not None
    params = {"num_images": syn.num_images, "size": syn.size, "seed": syn.seed,
              "stuff_classes": syn.stuff_classes}
    key = synth.dataset_name(**params)
    if generate:
        made = synth.ensure(cache_root, **params)
        splits = (made.train, made.val)
    else:
        splits = tuple(synth.split_files(cache_root / key, s, num_images=0,
                                         panoptic=syn.stuff_classes > 0)
                       for s in ("train", "val"))  # type: ignore[assignment]

    def text(path: Path | None) -> str | None:
        return None if path is None else str(path)

    return tuple(ResolvedDataset(name=f"{key}_{s.name}", json_file=str(s.json_file),
                                 image_root=str(s.image_root), panoptic_json=text(s.panoptic_json),
                                 panoptic_root=text(s.panoptic_root),
                                 sem_seg_root=text(s.sem_seg_root)) for s in splits)


def _stuff_names(ds: ResolvedDataset) -> tuple[str, ...]:
    """Stuff class names of a panoptic dataset whose json is here, in ``semantic_ids`` order
    (contiguous ids 1..S); () otherwise."""
    if ds.panoptic_json is None or not Path(ds.panoptic_json).is_file():
        return ()
    from orchestrator.data.panoptic import panoptic_categories

    return tuple(str(c["name"]) for c in panoptic_categories(Path(ds.panoptic_json))
                 if not c["isthing"])


def _panoptic_ready(ds: ResolvedDataset, field: str, cache_root: Path,
                    checks: Path | None) -> ResolvedDataset:
    """A panoptic dataset whose files are here, checked and with its stuff maps derived
    (``panoptic_check``); any other dataset as it is."""
    if not ds.panoptic or not (ds.exists and Path(ds.panoptic_json or "").is_file()
                               and Path(ds.panoptic_root or "").is_dir()):
        return ds
    from orchestrator.data.panoptic_check import prepare_panoptic

    return prepare_panoptic(ds, field, cache_root=cache_root, checks=checks)


def resolve_data(spec: JobSpec, *, cache_root: Path, base: Path | None = None,
                 strict: bool = True, generate: bool = True,
                 checks: Path | None = None) -> ResolvedData:
    """Find the datasets, generate the synthetic one if asked, count and name classes.

    ``strict=False`` (dry runs) tolerates missing files: the count stays unknown. ``checks``
    keeps the count and names by the json's content (``check_cache.cache_folder``). With
    ``generate``, a panoptic dataset is checked and its missing stuff maps derived
    (``panoptic_check``: bad data is an InputError naming the file and segment).
    """
    base = base or Path.cwd()
    test: ResolvedDataset | None
    if spec.data.synthetic is not None:
        train, test = _synthetic(spec, cache_root, generate)
    else:
        assert spec.data.train is not None
        train = _from_spec(spec.data.train, f"{spec.name}_train", base)
        test = _from_spec(spec.data.test, f"{spec.name}_test", base) if spec.data.test else None
    for ds, field in ((train, "data.train"), (test, "data.test")):
        if ds is not None and strict:
            _check_exists(ds, field)
    if generate:
        train = _panoptic_ready(train, "data.train", cache_root, checks)
        test = _panoptic_ready(test, "data.test", cache_root, checks) if test else None
    stuff = _stuff_names(train)
    if not Path(train.json_file).is_file():
        return ResolvedData(train=train, test=test, usable_images=None, class_names=(),
                            stuff_names=stuff)
    usable, names = _summary(Path(train.json_file), checks)
    return ResolvedData(train=train, test=test, usable_images=usable, class_names=names,
                        stuff_names=stuff)
