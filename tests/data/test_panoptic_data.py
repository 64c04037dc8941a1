"""Panoptic data on real files: the generator's stuff classes, resolution of file datasets and
of detectron2's built-in panoptic names, and the separated registration (contract section 1)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from orchestrator.data import synth
from orchestrator.data.catalog import ResolvedData, resolve_data
from orchestrator.data.panoptic import IGNORE_LABEL, check_panoptic, read_panoptic_png
from orchestrator.spec import parse_spec
from tests.conftest import TINY_JOB

BUILTIN = "coco_2017_val_panoptic_separated"


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make(root: Path, stuff: int = 2, seed: int = 0) -> synth.SyntheticDataset:
    return synth.generate(root, num_images=5, size=32, seed=seed, stuff_classes=stuff)


def test_instance_only_output_is_byte_identical_to_before() -> None:
    """stuff_classes 0 writes what the generator always wrote: the manifest (which holds every
    file's checksum) is pinned to the one the generator made before stuff classes existed."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        made = synth.generate(Path(tmp) / "d", num_images=6, size=48, seed=7)
        manifest = (made.root / "manifest.json").read_bytes()
        assert made.train.panoptic_json is None and made.val.sem_seg_root is None
    assert hashlib.sha256(manifest).hexdigest() == \
        "c55bc7c132bf7b6408341a0176073b364b3ae8eaeae6eedc65327b91002cd7e5"


def test_stuff_classes_write_consistent_panoptic_files(tmp_path: Path) -> None:
    made = make(tmp_path / "d", stuff=3)
    assert synth.dataset_name(num_images=5, size=32, seed=0, stuff_classes=3).endswith("-stuff3")
    for split in (made.train, made.val):
        assert split.panoptic_json and split.panoptic_root and split.sem_seg_root
        assert check_panoptic(split.panoptic_json, split.panoptic_root) == []
        panoptic = json.loads(split.panoptic_json.read_text())
        instances = json.loads(split.json_file.read_text())
        assert [i["id"] for i in panoptic["images"]] == [i["id"] for i in instances["images"]]
        things = [c for c in panoptic["categories"] if c["isthing"]]
        assert [(c["id"], c["name"]) for c in things] == \
            [(c["id"], c["name"]) for c in instances["categories"]]
        assert [(c["id"], c["name"]) for c in panoptic["categories"] if not c["isthing"]] == \
            [(101, "sky"), (102, "grass"), (103, "water")]
        for annotation in panoptic["annotations"]:
            ids = read_panoptic_png(split.panoptic_root / annotation["file_name"])
            for segment in annotation["segments_info"]:
                mask = ids == segment["id"]
                ys, xs = np.nonzero(mask)
                assert segment["area"] == mask.sum() and segment["iscrowd"] == 0
                assert segment["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            stuff = np.asarray(Image.open(split.sem_seg_root / annotation["file_name"]))
            assert stuff.dtype == np.uint8 and set(np.unique(stuff)) <= {0, 1, 2, 3}
            assert (ids == 0).sum() == 0 and (stuff == IGNORE_LABEL).sum() == 0


def test_stuff_classes_are_deterministic_and_vary_with_the_seed(tmp_path: Path) -> None:
    first, second = make(tmp_path / "a"), make(tmp_path / "b")
    other = make(tmp_path / "c", seed=1)
    assert digests(first.root) == digests(second.root)
    assert digests(first.root) != digests(other.root)
    assert "panoptic_stuff_val/000001.png" in digests(first.root)
    manifest = json.loads((first.root / "manifest.json").read_text())
    assert manifest["stuff_classes"] == ["sky", "grass"]
    assert manifest["parameters"]["stuff_classes"] == 2


def _job(data: dict[str, Any]) -> Any:
    raw = yaml.safe_load(TINY_JOB)
    raw["data"] = data
    return parse_spec(raw)


def test_synthetic_stuff_resolves_panoptic(tmp_path: Path) -> None:
    spec = _job({"synthetic": {"num_images": 5, "size": 32, "seed": 0, "stuff_classes": 2}})
    data = resolve_data(spec, cache_root=tmp_path / "cache", base=tmp_path)
    assert data.train.panoptic and data.test is not None and data.test.panoptic
    assert data.stuff_names == ("sky", "grass")
    assert data.class_names == synth.CLASSES
    assert Path(str(data.train.sem_seg_root)).name == "panoptic_stuff_train"
    assert ResolvedData.from_dict(data.to_dict()) == data
    offline = resolve_data(spec, cache_root=tmp_path / "other", base=tmp_path, strict=False,
                           generate=False)
    assert offline.train.panoptic and offline.stuff_names == ()  # nothing written, nothing read
    assert not (tmp_path / "other").exists()


def test_file_dataset_resolves_its_panoptic_files(tmp_path: Path) -> None:
    made = make(tmp_path / "d")
    data = resolve_data(_job({"train": {
        "json_file": "d/annotations/instances_train.json", "image_root": "d/train",
        "panoptic_json": "d/annotations/panoptic_train.json",
        "panoptic_root": "d/panoptic_train"}}), cache_root=tmp_path / "cache", base=tmp_path)
    assert data.train.panoptic_json == str(made.train.panoptic_json)
    assert data.train.panoptic_root == str(made.train.panoptic_root)
    assert data.train.sem_seg_root == str(made.train.sem_seg_root)  # the default name
    assert data.stuff_names == ("sky", "grass")


def coco_tree(root: Path) -> Path:
    """A tiny $DETECTRON2_DATASETS in detectron2's COCO layout (val2017 only), made from a
    generated set; no stuff maps: pre-flight derives them."""
    made = make(root / "made")
    coco = root / "datasets" / "coco"
    (coco / "annotations").mkdir(parents=True)
    shutil.copytree(made.train.image_root, coco / "val2017")
    shutil.copytree(str(made.train.panoptic_root), coco / "panoptic_val2017")
    shutil.copy(made.train.json_file, coco / "annotations" / "instances_val2017.json")
    shutil.copy(str(made.train.panoptic_json), coco / "annotations" / "panoptic_val2017.json")
    return root / "datasets"


def test_builtin_panoptic_name_resolves_under_detectron2_datasets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTRON2_DATASETS", str(coco_tree(tmp_path)))
    data = resolve_data(_job({"train": {"name": BUILTIN}}), cache_root=tmp_path / "cache",
                        base=tmp_path)
    coco = tmp_path / "datasets" / "coco"
    assert data.train.builtin and data.train.name == BUILTIN
    assert data.train.json_file == str(coco / "annotations" / "instances_val2017.json")
    assert data.train.image_root == str(coco / "val2017")
    assert data.train.panoptic_json == str(coco / "annotations" / "panoptic_val2017.json")
    assert data.train.panoptic_root == str(coco / "panoptic_val2017")
    assert data.train.sem_seg_root == str(coco / "panoptic_stuff_val2017")
    assert len(list((coco / "panoptic_stuff_val2017").glob("*.png"))) == 4  # derived
    assert data.stuff_names == ("sky", "grass")


@pytest.fixture
def catalogs() -> Iterator[list[str]]:
    """Names a test registers are removed after it, and detectron2's built-in entry of
    BUILTIN is put back: the catalogs are process-wide."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    saved = (DatasetCatalog[BUILTIN], MetadataCatalog.get(BUILTIN).as_dict())
    names: list[str] = []
    yield names
    for name in [*names, BUILTIN]:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        with contextlib.suppress(KeyError):
            MetadataCatalog.remove(name)
    DatasetCatalog.register(BUILTIN, saved[0])
    MetadataCatalog.get(BUILTIN).set(**{k: v for k, v in saved[1].items() if k != "name"})


def _check_registered(name: str, ds: Any, stuff: list[str]) -> None:
    """The contract's dataset dicts and metadata."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == list(synth.CLASSES)
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}
    assert meta.stuff_classes == ["things", *stuff]
    assert meta.stuff_dataset_id_to_contiguous_id == {101 + i: 1 + i for i in range(len(stuff))}
    assert (meta.json_file, meta.image_root, meta.panoptic_json, meta.panoptic_root,
            meta.sem_seg_root, meta.ignore_label) == (
        ds.json_file, ds.image_root, ds.panoptic_json, ds.panoptic_root, ds.sem_seg_root, 255)
    panoptic = json.loads(Path(ds.panoptic_json).read_text())
    file_names = {a["image_id"]: a["file_name"] for a in panoptic["annotations"]}
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == len(file_names)
    for record in dicts:
        assert {"file_name", "image_id", "height", "width", "annotations",
                "sem_seg_file_name"} <= set(record)
        assert record["sem_seg_file_name"] == str(Path(ds.sem_seg_root)
                                                  / file_names[record["image_id"]])
        assert Path(record["sem_seg_file_name"]).is_file()
        assert record["annotations"]
        assert {a["category_id"] for a in record["annotations"]} <= {0, 1, 2, 3}


def test_registration_gives_the_separated_form(tmp_path: Path, catalogs: list[str]) -> None:
    from orchestrator.data.register import register_datasets

    spec = _job({"synthetic": {"num_images": 5, "size": 32, "seed": 0, "stuff_classes": 2}})
    data = resolve_data(spec, cache_root=tmp_path / "cache", base=tmp_path)
    assert data.test is not None
    catalogs += [data.train.name, data.test.name]
    register_datasets(data)
    register_datasets(data)  # again: the same files are no error
    _check_registered(data.train.name, data.train, ["sky", "grass"])
    _check_registered(data.test.name, data.test, ["sky", "grass"])


def test_builtin_panoptic_name_gets_the_contract_metadata(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, catalogs: list[str]) -> None:
    """detectron2 registers coco_2017_val_panoptic_separated at import (its stuff_classes
    start with "things" too, but with 54 COCO names, an extra 0 -> 0 stuff id and paths under
    ./datasets); ours replaces it with the resolved files and the data's classes."""
    from detectron2.data import MetadataCatalog

    from orchestrator.data.register import register_datasets

    assert MetadataCatalog.get(BUILTIN).stuff_classes[0] == "things"
    assert 0 in MetadataCatalog.get(BUILTIN).stuff_dataset_id_to_contiguous_id
    monkeypatch.setenv("DETECTRON2_DATASETS", str(coco_tree(tmp_path)))
    data = resolve_data(_job({"train": {"name": BUILTIN}}), cache_root=tmp_path / "cache",
                        base=tmp_path)
    register_datasets(data)
    _check_registered(BUILTIN, data.train, ["sky", "grass"])


def test_a_name_registered_with_other_files_is_an_error(tmp_path: Path,
                                                         catalogs: list[str]) -> None:
    from dataclasses import replace

    from orchestrator.data.register import register_dataset

    spec = _job({"synthetic": {"num_images": 5, "size": 32, "seed": 0, "stuff_classes": 2}})
    data = resolve_data(spec, cache_root=tmp_path / "cache", base=tmp_path)
    catalogs.append(data.train.name)
    register_dataset(data.train)
    with pytest.raises(ValueError, match="is registered with other files"):
        register_dataset(replace(data.train, sem_seg_root=str(tmp_path / "elsewhere")))


def _registered_train_set(tmp_path: Path, catalogs: list[str]) -> ResolvedData:
    """A generated panoptic set (2 stuff classes) whose train split is registered."""
    from orchestrator.data.register import register_datasets

    spec = _job({"synthetic": {"num_images": 5, "size": 32, "seed": 0, "stuff_classes": 2}})
    data = resolve_data(spec, cache_root=tmp_path / "cache", base=tmp_path)
    catalogs.append(data.train.name)
    register_datasets(ResolvedData(train=data.train, test=None, usable_images=None,
                                   class_names=data.class_names))
    return data


def test_detectron2_mapper_reads_the_registered_stuff_maps(tmp_path: Path,
                                                          catalogs: list[str]) -> None:
    """detectron2's own DatasetMapper turns a registered record into a ``sem_seg`` target:
    uint8 values 0 (things), 1..S and nothing else, at the image's size."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, DatasetMapper


    data = _registered_train_set(tmp_path, catalogs)
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (32,), 32
    cfg.INPUT.RANDOM_FLIP = "none"
    record = DatasetMapper(cfg, is_train=True)(DatasetCatalog.get(data.train.name)[0])
    sem = record["sem_seg"]
    assert sem.dtype == torch.long and sem.shape == (32, 32)
    assert set(sem.unique().tolist()) <= {0, 1, 2} and (sem == 0).any()
    assert len(record["instances"]) > 0


def test_the_node_cache_leaves_panoptic_sets_to_detectron2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, catalogs: list[str]) -> None:
    """The node's dataset cache stores instance dicts only: a panoptic train set must load
    through the catalog, or its records would lose ``sem_seg_file_name``."""
    from detectron2.config import get_cfg
    from detectron2.data import get_detection_dataset_dicts

    from orchestrator.data.cache import cached_train_dataset

    monkeypatch.setenv("ORCHESTRATOR_DATA_CACHE", str(tmp_path / "node-cache"))
    data = _registered_train_set(tmp_path, catalogs)
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (data.train.name,)
    assert cached_train_dataset(cfg) is None
    assert not (tmp_path / "node-cache").exists()
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN)
    assert dicts and all(Path(d["sem_seg_file_name"]).is_file() for d in dicts)
