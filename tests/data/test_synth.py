"""Tests for the synthetic shapes dataset: determinism, COCO validity, caching, atomicity."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from orchestrator.data import synth
from orchestrator.data.synth import CLASSES, SyntheticDataset, ensure, generate

SMALL: dict[str, Any] = {"num_images": 8, "size": 64, "seed": 0}


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _coco(path: Path) -> COCO:
    return COCO(str(path))


def test_public_api() -> None:
    assert CLASSES == ("circle", "square", "triangle", "star")
    assert set(synth.__all__) == {
        "CLASSES",
        "STUFF_CLASSES",
        "SyntheticDataset",
        "SyntheticSplit",
        "dataset_name",
        "split_files",
        "ensure",
        "generate",
    }


def test_module_imports_no_heavy_frameworks() -> None:
    tree = ast.parse(Path(synth.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"torch", "detectron2", "ray", "torchvision"}


def test_layout_and_split_sizes(tmp_path: Path) -> None:
    ds = generate(tmp_path / "ds", num_images=10, size=64, seed=3)
    assert isinstance(ds, SyntheticDataset)
    assert (ds.train.num_images, ds.val.num_images) == (8, 2)
    assert ds.train.json_file == tmp_path / "ds" / "annotations" / "instances_train.json"
    assert ds.val.image_root == tmp_path / "ds" / "val"
    for split in (ds.train, ds.val):
        assert len(list(split.image_root.glob("*.png"))) == split.num_images
        assert len(json.loads(split.json_file.read_text())["images"]) == split.num_images
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["parameters"]["seed"] == 3
    assert manifest["parameters"]["num_images"] == 10


@pytest.mark.parametrize(
    ("num_images", "val_fraction", "expected"),
    [(6, 0.2, (5, 1)), (10, 0.0, (9, 1)), (9, 0.5, (5, 4)), (2, 0.2, (1, 1))],
)
def test_split_arithmetic(
    tmp_path: Path, num_images: int, val_fraction: float, expected: tuple[int, int]
) -> None:
    ds = generate(
        tmp_path / "ds", num_images=num_images, size=32, seed=0, val_fraction=val_fraction
    )
    assert (ds.train.num_images, ds.val.num_images) == expected


def test_deterministic(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", **SMALL)
    b = generate(tmp_path / "b", **SMALL)
    files_a, files_b = _files(a.root), _files(b.root)
    assert files_a.keys() == files_b.keys()
    for name, path in files_a.items():
        if name.endswith(".json"):
            assert path.read_bytes() == files_b[name].read_bytes(), name
        else:
            assert np.array_equal(_pixels(path), _pixels(files_b[name])), name
            assert path.read_bytes() == files_b[name].read_bytes(), name


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", **SMALL)
    b = generate(tmp_path / "b", **{**SMALL, "seed": 1})
    assert a.train.json_file.read_bytes() != b.train.json_file.read_bytes()
    first = "000001.png"
    assert not np.array_equal(
        _pixels(a.train.image_root / first), _pixels(b.train.image_root / first)
    )


def test_coco_annotations_are_valid(tmp_path: Path) -> None:
    size, max_instances = 64, 4
    ds = generate(tmp_path / "ds", num_images=10, size=size, seed=7, max_instances=max_instances)
    for split in (ds.train, ds.val):
        coco = _coco(split.json_file)
        assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == [1, 2, 3, 4]
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        ann_ids = coco.getAnnIds()
        assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) == 1
        for image in coco.loadImgs(coco.getImgIds()):
            assert (image["width"], image["height"]) == (size, size)
            with Image.open(split.image_root / image["file_name"]) as png:
                assert png.mode == "RGB" and png.size == (size, size)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            assert 1 <= len(anns) <= max_instances
            for ann in anns:
                _check_annotation(coco, ann, size)


def _check_annotation(coco: COCO, ann: dict[str, Any], size: int) -> None:
    assert ann["category_id"] in {1, 2, 3, 4}
    assert ann["iscrowd"] == 0
    mask = coco.annToMask(ann)
    assert mask.shape == (size, size)
    full = int(mask.sum())
    assert full > 0
    x, y, w, h = ann["bbox"]
    assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= size and y + h <= size
    rows, cols = np.nonzero(mask)
    assert x - 1 <= cols.min() and cols.max() <= x + w + 1
    assert y - 1 <= rows.min() and rows.max() <= y + h + 1
    # area is the visible area after occlusion: positive, not above the full shape (small
    # rasteriser differences allowed) and at least ~60% of it.
    assert 0 < ann["area"] <= full * 1.1 + 2
    assert ann["area"] >= 0.5 * full
    polygon = ann["segmentation"][0]
    assert len(polygon) % 2 == 0 and len(polygon) >= 6
    assert all(round(v, 2) == v for v in polygon)


def test_ensure_reuses_cache(tmp_path: Path) -> None:
    first = ensure(tmp_path, num_images=6, size=64, seed=2)
    assert first.root == tmp_path / "shapes-n6-s64-seed2"
    before = {name: p.stat().st_mtime_ns for name, p in _files(first.root).items()}
    second = ensure(tmp_path, num_images=6, size=64, seed=2)
    after = {name: p.stat().st_mtime_ns for name, p in _files(second.root).items()}
    assert second == first
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shapes-n6-s64-seed2.lock",
                                                          "shapes-n6-s64-seed2"]


def test_lost_rename_race_uses_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a concurrent process finishing first while we are still writing."""
    out = tmp_path / "ds"
    real_save = synth._save_png
    raced = False

    def save_and_race(pixels: np.ndarray, path: Path) -> None:
        nonlocal raced
        if not raced:
            raced = True
            monkeypatch.setattr(synth, "_save_png", real_save)
            generate(out, **SMALL)  # the "other process" wins the rename
            monkeypatch.setattr(synth, "_save_png", save_and_race)
        real_save(pixels, path)

    monkeypatch.setattr(synth, "_save_png", save_and_race)
    ds = generate(out, **SMALL)
    assert raced and ds.root == out
    assert json.loads((out / "manifest.json").read_text())["parameters"]["seed"] == SMALL["seed"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_different_parameters_raise(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    generate(out, **SMALL)
    with pytest.raises(FileExistsError, match=str(out)):
        generate(out, **{**SMALL, "seed": 1})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError, match=str(foreign)):
        generate(foreign, **SMALL)
    assert (foreign / "keep.txt").read_text() == "not a dataset"


def test_overwrite_replaces(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    generate(out, **SMALL)
    (out / "stale.txt").write_text("old")
    ds = generate(out, **{**SMALL, "seed": 5}, overwrite=True)
    fresh = generate(tmp_path / "fresh", **{**SMALL, "seed": 5})
    assert not (out / "stale.txt").exists()
    assert ds.train.json_file.read_bytes() == fresh.train.json_file.read_bytes()
    assert json.loads((out / "manifest.json").read_text())["parameters"]["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "fresh"]


@pytest.mark.parametrize(
    ("overrides", "argument"),
    [
        ({"size": 31}, "size"),
        ({"num_images": 1}, "num_images"),
        ({"max_instances": 0}, "max_instances"),
        ({"seed": -1}, "seed"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"num_images": 2, "val_fraction": 0.8}, "val_fraction"),
    ],
)
def test_invalid_arguments(tmp_path: Path, overrides: dict[str, Any], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        generate(tmp_path / "ds", **{**SMALL, **overrides})
    assert list(tmp_path.iterdir()) == []


class _Boom(RuntimeError):
    pass


def _failing_save(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    real_save = synth._save_png
    calls = 0

    def save(pixels: np.ndarray, path: Path) -> None:
        nonlocal calls
        calls += 1
        if calls > after:
            raise _Boom("disk on fire")
        real_save(pixels, path)

    monkeypatch.setattr(synth, "_save_png", save)


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_save(monkeypatch, after=3)
    with pytest.raises(_Boom):
        generate(tmp_path / "ds", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ds"
    generate(out, **SMALL)
    before = {name: p.read_bytes() for name, p in _files(out).items()}
    _failing_save(monkeypatch, after=2)
    with pytest.raises(_Boom):
        generate(out, **{**SMALL, "seed": 9}, overwrite=True)
    assert {name: p.read_bytes() for name, p in _files(out).items()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    time.sleep(0.05)  # later than the write, as damage is: a new modification time
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("relative", "damage"), [
    ("train/000001.png", _cut), ("annotations/instances_train.json", _garble),
    ("val/000001.png", Path.unlink), ("manifest.json", _cut)])
def test_ensure_regenerates_a_damaged_dataset_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, relative: str, damage: object) -> None:
    first = ensure(tmp_path, num_images=6, size=64, seed=2)
    intact = {name: p.read_bytes() for name, p in _files(first.root).items()}
    damage(first.root / relative)  # type: ignore[operator]
    with caplog.at_level("WARNING", logger="orchestrator.data.synth"):
        again = ensure(tmp_path, num_images=6, size=64, seed=2)
    assert str(first.root) in caplog.text and "generating it again" in caplog.text
    assert {name: p.read_bytes() for name, p in _files(again.root).items()} == intact


def test_ensure_replaces_a_half_generated_dataset_and_stale_staging(tmp_path: Path) -> None:
    (tmp_path / ".shapes-n6-s64-seed2.tmp-killed").mkdir()  # a killed generator's staging
    half = tmp_path / "shapes-n6-s64-seed2"
    (half / "train").mkdir(parents=True)  # e.g. a copy cut short: images, no manifest
    (half / "train" / "000001.png").write_bytes(b"\x89PNG")
    made = ensure(tmp_path, num_images=6, size=64, seed=2)
    assert json.loads((made.root / "manifest.json").read_text())["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shapes-n6-s64-seed2.lock",
                                                          "shapes-n6-s64-seed2"]
