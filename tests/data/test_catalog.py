from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator.data.catalog import ResolvedData, count_usable_images, resolve_data
from orchestrator.errors import InputError
from orchestrator.spec import parse_spec
from tests.conftest import TINY_JOB


def coco(images: int, annotated: dict[int, list[int]]) -> dict:
    """``annotated`` maps image id to iscrowd flags of its annotations."""
    anns = [{"id": i, "image_id": img, "iscrowd": crowd, "category_id": 1}
            for i, (img, crowd) in enumerate(((img, c) for img, flags in annotated.items()
                                              for c in flags), start=1)]
    return {"images": [{"id": i} for i in range(1, images + 1)], "annotations": anns,
            "categories": [{"id": 3, "name": "b"}, {"id": 1, "name": "a"}]}


def test_usable_images_drop_empty_and_crowd_only() -> None:
    doc = coco(5, {1: [0], 2: [1], 3: [1, 0], 5: [0, 0]})
    assert count_usable_images(doc) == 3


def test_file_datasets_resolve_relative_to_base_and_count(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "train.json").write_text(json.dumps(coco(4, {1: [0], 2: [0]})), encoding="utf-8")
    raw = yaml.safe_load(TINY_JOB)
    raw["data"] = {"train": {"json_file": "train.json", "image_root": "imgs"}}
    data = resolve_data(parse_spec(raw), cache_root=tmp_path / "cache", base=tmp_path)
    assert data.train.json_file == str(tmp_path / "train.json")
    assert data.train.name == "tiny_train"
    assert data.usable_images == 2
    assert data.class_names == ("a", "b")  # sorted by category id
    assert ResolvedData.from_dict(data.to_dict()) == data


@pytest.mark.parametrize(("make", "message"), [
    ({"imgs"}, "annotation file not found"),
    ({"train.json"}, "image folder not found"),
])
def test_missing_paths_are_input_errors(tmp_path: Path, make: set[str], message: str) -> None:
    if "imgs" in make:
        (tmp_path / "imgs").mkdir()
    if "train.json" in make:
        (tmp_path / "train.json").write_text(json.dumps(coco(1, {})), encoding="utf-8")
    raw = yaml.safe_load(TINY_JOB)
    raw["data"] = {"train": {"json_file": "train.json", "image_root": "imgs"}}
    with pytest.raises(InputError, match=f"data.train: {message}"):
        resolve_data(parse_spec(raw), cache_root=tmp_path, base=tmp_path)
    relaxed = resolve_data(parse_spec(raw), cache_root=tmp_path, base=tmp_path, strict=False)
    assert relaxed.train.exists is False


def test_not_a_coco_file(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "train.json").write_text("[1, 2]", encoding="utf-8")
    raw = yaml.safe_load(TINY_JOB)
    raw["data"] = {"train": {"json_file": "train.json", "image_root": "imgs"}}
    with pytest.raises(InputError, match="not a COCO instances file"):
        resolve_data(parse_spec(raw), cache_root=tmp_path, base=tmp_path)


def test_unknown_registered_name(tmp_path: Path) -> None:
    raw = yaml.safe_load(TINY_JOB)
    raw["data"] = {"train": {"name": "coco_2099_train"}}
    with pytest.raises(InputError, match="unknown dataset name 'coco_2099_train'"):
        resolve_data(parse_spec(raw), cache_root=tmp_path)


def test_known_coco_name_maps_to_detectron2_layout(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    raw = yaml.safe_load(TINY_JOB)
    raw["data"] = {"train": {"name": "coco_2017_train"}}
    data = resolve_data(parse_spec(raw), cache_root=tmp_path, strict=False)
    assert data.train.json_file == str(tmp_path / "coco/annotations/instances_train2017.json")
    assert data.train.builtin and data.usable_images is None


def test_synthetic_data_is_generated_once_into_the_cache(tmp_path: Path) -> None:
    spec = parse_spec(yaml.safe_load(TINY_JOB))
    data = resolve_data(spec, cache_root=tmp_path)
    assert data.train.name == "shapes-n12-s64-seed1_train"
    assert data.test is not None and Path(data.test.json_file).is_file()
    assert data.usable_images is not None and data.usable_images >= 1
    assert len(data.class_names) == 4
    stamp = Path(data.train.json_file).stat().st_mtime_ns
    assert resolve_data(spec, cache_root=tmp_path) == data
    assert Path(data.train.json_file).stat().st_mtime_ns == stamp
