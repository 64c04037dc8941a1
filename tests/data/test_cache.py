"""The per-node dataset cache: detectron2's dicts exactly, parsed once, keyed by content."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets import register_coco_instances

from orchestrator.data.cache import CacheSource, cache_key, cached_dataset, cached_train_dataset

REPO = Path(__file__).resolve().parents[2]


def write_coco(path: Path, num_images: int, seed: int = 0) -> Path:
    """A COCO instances file (no image files: loading never opens them): polygons, a few
    crowd-only and empty images that detectron2's filter drops, non-contiguous category ids."""
    rng = random.Random(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": 640,
                       "height": 480})
        kind = image_id % 10
        for _ in range(0 if kind == 0 else rng.randint(1, 6)):
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            w, h = rng.uniform(10, 130), rng.uniform(10, 120)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": rng.choice([1, 3, 7]), "bbox": [x, y, w, h], "area": w * h,
                "iscrowd": 1 if kind == 1 else 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    categories = [{"id": i, "name": name} for i, name in ((1, "a"), (3, "b"), (7, "c"))]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}), encoding="utf-8")
    return path


@pytest.fixture
def coco(tmp_path: Path) -> CacheSource:
    return CacheSource(json_file=str(write_coco(tmp_path / "train.json", 300)),
                       image_root=str(tmp_path / "images"))


def reference_dicts(source: CacheSource, name: str) -> list[dict]:
    """What detectron2 itself hands the train loader for this file. Registered for this call
    only: a name left in the catalog would point the next test at a deleted tmp_path."""
    register_coco_instances(name, {}, source.json_file, source.image_root)
    try:
        return get_detection_dataset_dicts([name], filter_empty=True)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_the_cache_holds_exactly_detectron2s_dicts(coco: CacheSource, tmp_path: Path) -> None:
    dataset = cached_dataset([coco], root=tmp_path / "cache")
    expected = reference_dicts(coco, "cache_reference_300")
    assert 200 < len(dataset) == len(expected) < 300  # empty and crowd-only images dropped
    assert [dataset[i] for i in range(len(dataset))] == expected
    assert dataset.meta["thing_classes"] == ["a", "b", "c"]
    assert dataset.meta["thing_dataset_id_to_contiguous_id"] == {"1": 0, "3": 1, "7": 2}


def test_a_second_load_maps_the_stored_files_without_parsing(
        coco: CacheSource, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cache"
    with caplog.at_level("INFO", logger="orchestrator.data.cache"):
        first = cached_dataset([coco], root=root)
        built = (first.folder / "data.bin").stat().st_mtime_ns
        assert "built" in caplog.text
        caplog.clear()
        second = cached_dataset([coco], root=root)
    assert "built" not in caplog.text
    assert second.folder == first.folder
    assert (second.folder / "data.bin").stat().st_mtime_ns == built
    assert second[5] == first[5]


def test_the_key_follows_the_content_not_the_path(coco: CacheSource, tmp_path: Path) -> None:
    copy = tmp_path / "copy.json"
    copy.write_bytes(Path(coco.json_file).read_bytes())
    same = CacheSource(json_file=str(copy), image_root=coco.image_root)
    assert cache_key([same], filter_empty=True) == cache_key([coco], filter_empty=True)
    assert cache_key([coco], filter_empty=False) != cache_key([coco], filter_empty=True)
    write_coco(copy, 300, seed=1)
    assert cache_key([same], filter_empty=True) != cache_key([coco], filter_empty=True)


def test_two_processes_on_a_node_parse_once(coco: CacheSource, tmp_path: Path) -> None:
    """Two workers start together: one parses (in a child process), the other waits for it
    and maps the result."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from pathlib import Path\n"
        "from orchestrator.data.cache import CacheSource, cached_dataset\n"
        f"d = cached_dataset([CacheSource({coco.json_file!r}, {coco.image_root!r})],\n"
        f"                   root=Path({str(tmp_path / 'cache')!r}), child=True)\n"
        "print('items', len(d))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sum("dataset cache" in out and "built" in out for out in outputs) == 1, outputs
    assert len({line for out in outputs for line in out.splitlines()
                if line.startswith("items")}) == 1


def test_the_train_set_of_a_cfg_comes_from_the_cache_with_its_metadata(
        coco: CacheSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detectron2.config import get_cfg

    monkeypatch.setenv("ORCHESTRATOR_DATA_CACHE", str(tmp_path / "cache"))
    register_coco_instances("cache_cfg_300", {}, coco.json_file, coco.image_root)
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("cache_cfg_300",)
    dataset = cached_train_dataset(cfg)
    assert dataset is not None and dataset.folder.parent == tmp_path / "cache"
    assert MetadataCatalog.get("cache_cfg_300").thing_classes == ["a", "b", "c"]
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"  # needs the dicts: no cache
    assert cached_train_dataset(cfg) is None
    monkeypatch.setenv("ORCHESTRATOR_DATA_CACHE", "off")
    cfg.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
    assert cached_train_dataset(cfg) is None


def test_parsing_leaves_detectron2s_catalog_as_it_was(tmp_path: Path) -> None:
    """Two datasets with other classes parsed in one process: neither leaves a scratch name
    behind whose metadata a later parse (or a registration) would collide with."""
    before = set(MetadataCatalog.list())
    other = tmp_path / "other.json"
    data = json.loads(write_coco(other, 30).read_text(encoding="utf-8"))
    data["categories"] = [{"id": i, "name": f"class-{i}"} for i in (1, 3, 7)]
    other.write_text(json.dumps(data), encoding="utf-8")
    first = cached_dataset([CacheSource(str(write_coco(tmp_path / "a.json", 30)), "img")],
                           root=tmp_path / "cache")
    second = cached_dataset([CacheSource(str(other), "img")], root=tmp_path / "cache")
    assert first.meta["thing_classes"] == ["a", "b", "c"]
    assert second.meta["thing_classes"] == ["class-1", "class-3", "class-7"]
    assert set(MetadataCatalog.list()) == before


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    time.sleep(0.05)  # later than the write, as damage is: a new modification time
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("name", "damage"), [("data.bin", _cut), ("data.bin", _garble),
                                              ("addr.npy", _cut), ("meta.json", _garble),
                                              ("complete.json", _cut)])
def test_a_damaged_entry_is_rebuilt_with_a_warning(
        coco: CacheSource, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str,
        damage: object) -> None:
    root = tmp_path / "cache"
    first = cached_dataset([coco], root=root)
    expected = [first[i] for i in range(len(first))]
    del first  # unmap before the file changes under it
    damage(next(root.glob("*/" + name)))  # type: ignore[operator]
    with caplog.at_level("WARNING", logger="orchestrator.data.cache"):
        again = cached_dataset([coco], root=root)
    assert "damaged" in caplog.text and name in caplog.text
    assert [again[i] for i in range(len(again))] == expected


def test_a_build_killed_halfway_is_rebuilt_and_its_leftovers_removed(
        coco: CacheSource, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    folder = root / cache_key([coco], filter_empty=True)
    (root / f"{folder.name}.building-999999").mkdir(parents=True)  # a killed build's staging
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"\x80\x05partial")  # a half-written entry, no record
    dataset = cached_dataset([coco], root=root)
    assert len(dataset) == len(reference_dicts(coco, "cache_reference_300"))
    assert sorted(p.name for p in root.iterdir()) == [folder.name, f"{folder.name}.lock"]
