"""COCO panoptic files: id PNGs, derived stuff maps and the consistency check, on real files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from orchestrator.data.panoptic import (
    IGNORE_LABEL,
    PanopticProblem,
    check_panoptic,
    ids_to_rgb,
    read_panoptic_png,
    semantic_ids,
    write_panoptic_png,
    write_semantic_maps,
)
from orchestrator.errors import InputError

# Stuff ids follow the list order (sky before grass although 10 > 7), not the id order.
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 10, "name": "sky", "isthing": 0},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 7, "name": "grass", "isthing": 0},
    {"id": 20, "name": "road", "isthing": 0},
]

# a.png (4 wide, 3 high): sky 5931152, person 300, grass 70000, a car crowd 12, VOID 0.
A_IDS = np.array([[0, 5931152, 5931152, 300],
                  [70000, 70000, 300, 300],
                  [12, 12, 0, 0]])
A_SEGMENTS = [{"id": 5931152, "category_id": 10, "iscrowd": 0},
              {"id": 300, "category_id": 1, "iscrowd": 0},
              {"id": 70000, "category_id": 7, "iscrowd": 0},
              {"id": 12, "category_id": 2, "iscrowd": 1}]
# b.png (2 x 2): road 16777215 (the largest id), car 256, VOID.
B_IDS = np.array([[16777215, 16777215],
                  [256, 0]])
B_SEGMENTS = [{"id": 16777215, "category_id": 20, "iscrowd": 0},
              {"id": 256, "category_id": 2, "iscrowd": 0}]


def _document() -> dict[str, Any]:
    """A fresh, consistent panoptic json document (tests change their own copy)."""
    return copy.deepcopy({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3},
                   {"id": 2, "file_name": "b.jpg", "width": 2, "height": 2}],
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": A_SEGMENTS},
                        {"image_id": 2, "file_name": "b.png", "segments_info": B_SEGMENTS}],
        "categories": CATEGORIES,
    })


def _write(root: Path, document: dict[str, Any],
           pngs: dict[str, np.ndarray] | None = None) -> tuple[Path, Path]:
    """The json and its PNG folder under ``root``; PNGs written with PIL from hand-made RGB."""
    png_dir = root / "panoptic"
    png_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in (pngs or {"a.png": A_IDS, "b.png": B_IDS}).items():
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
        Image.fromarray(rgb, mode="RGB").save(png_dir / name)
    json_file = root / "panoptic.json"
    json_file.write_text(json.dumps(document), encoding="utf-8")
    return json_file, png_dir


def _map(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_png_ids_are_r_plus_256g_plus_65536b(tmp_path: Path) -> None:
    # (R, G, B) = (1, 2, 3) -> 1 + 2 * 256 + 3 * 65536 = 197121; (0, 1, 0) -> 256.
    rgb = np.array([[[1, 2, 3], [0, 1, 0]], [[255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "hand.png")
    assert read_panoptic_png(tmp_path / "hand.png").tolist() == [[197121, 256], [16777215, 0]]


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 197121, 16777215]])
    write_panoptic_png(tmp_path / "ids.png", ids)
    assert np.array_equal(read_panoptic_png(tmp_path / "ids.png"), ids)
    with Image.open(tmp_path / "ids.png") as image:
        assert image.mode == "RGB" and image.getpixel((2, 1)) == (1, 2, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["ids.png"]  # no temporary file left


def test_ids_that_do_not_fit_three_channels_are_refused() -> None:
    with pytest.raises(ValueError, match="256\\*\\*3"):
        ids_to_rgb(np.array([[16777216]]))
    with pytest.raises(ValueError, match="256\\*\\*3"):
        ids_to_rgb(np.array([[-1]]))


def test_grayscale_png_is_refused(tmp_path: Path) -> None:
    # Read as RGB it would give 7 * (1 + 256 + 65536): a silent wrong id, hence an error.
    Image.fromarray(np.full((2, 2), 7, dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    with pytest.raises(InputError, match=r"gray\.png.*mode 'L'"):
        read_panoptic_png(tmp_path / "gray.png")


def test_semantic_ids_follow_the_category_list() -> None:
    assert semantic_ids(CATEGORIES) == {1: 0, 10: 1, 2: 0, 7: 2, 20: 3}
    with pytest.raises(InputError, match=r"category 3 \(fog\): isthing must be 0 or 1"):
        semantic_ids([{"id": 3, "name": "fog"}])
    with pytest.raises(InputError, match="255 stuff categories"):
        semantic_ids([{"id": i, "name": str(i), "isthing": 0} for i in range(1, 256)])


def test_derived_maps_have_the_published_values(tmp_path: Path) -> None:
    document = _document()
    # An id in the PNG with no segment (999) maps to the ignore label like VOID.
    a_ids = A_IDS.copy()
    a_ids[2, 3] = 999
    json_file, png_dir = _write(tmp_path, document, {"a.png": a_ids, "b.png": B_IDS})
    out = tmp_path / "stuff"
    assert write_semantic_maps(json_file, png_dir, out).written == 2
    # sky -> 1, grass -> 2, road -> 3; person and the car crowd -> 0; VOID and 999 -> 255.
    assert _map(out / "a.png").tolist() == [[255, 1, 1, 0],
                                            [2, 2, 0, 0],
                                            [0, 0, 255, 255]]
    assert _map(out / "b.png").tolist() == [[3, 3], [0, IGNORE_LABEL]]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_existing_maps_are_kept_and_missing_ones_written(tmp_path: Path) -> None:
    json_file, png_dir = _write(tmp_path, _document())
    out = tmp_path / "stuff"
    write_semantic_maps(json_file, png_dir, out)
    expected_b = _map(out / "b.png")
    Image.fromarray(np.full((3, 4), 9, dtype=np.uint8)).save(out / "a.png")  # someone's own
    (out / "b.png").unlink()
    (out / ".b.png.x1y2.tmp").write_bytes(b"\x89PNG cut")  # a crashed writer's leftover
    result = write_semantic_maps(json_file, png_dir, out)
    assert (result.written, result.skipped) == (1, 1)
    assert np.array_equal(_map(out / "a.png"), np.full((3, 4), 9))
    assert np.array_equal(_map(out / "b.png"), expected_b)


def test_a_bad_image_stops_with_the_finished_maps_whole(tmp_path: Path) -> None:
    document = _document()
    document["annotations"][1]["segments_info"][1]["category_id"] = 99
    json_file, png_dir = _write(tmp_path, document)
    out = tmp_path / "stuff"
    with pytest.raises(InputError, match=r"b\.png: segment 256 has category_id 99"):
        write_semantic_maps(json_file, png_dir, out)
    assert [p.name for p in out.iterdir()] == ["a.png"]
    assert _map(out / "a.png").shape == (3, 4)
    (png_dir / "a.png").unlink()
    (out / "a.png").unlink()
    with pytest.raises(InputError, match=r"a\.png: cannot read the panoptic PNG"):
        write_semantic_maps(json_file, png_dir, out)
    assert list(out.iterdir()) == []


def test_consistent_data_has_no_problem(tmp_path: Path) -> None:
    assert check_panoptic(*_write(tmp_path, _document())) == []


def _with_extra_pixel(document: dict[str, Any], pngs: dict[str, np.ndarray]) -> None:
    pngs["b.png"][1, 1] = 4242  # VOID turned into an id the json does not list


def _with_unlisted_segment(document: dict[str, Any], pngs: dict[str, np.ndarray]) -> None:
    document["annotations"][0]["segments_info"].append({"id": 77, "category_id": 1})


def _with_unknown_category(document: dict[str, Any], pngs: dict[str, np.ndarray]) -> None:
    document["annotations"][0]["segments_info"][2]["category_id"] = 55


def _with_wrong_size(document: dict[str, Any], pngs: dict[str, np.ndarray]) -> None:
    document["images"][1]["width"] = 3


def _with_missing_png(document: dict[str, Any], pngs: dict[str, np.ndarray]) -> None:
    del pngs["a.png"]


def _with_duplicate_segment(document: dict[str, Any], pngs: dict[str, np.ndarray]) -> None:
    document["annotations"][1]["segments_info"].append({"id": 256, "category_id": 2})


def _with_unknown_image(document: dict[str, Any], pngs: dict[str, np.ndarray]) -> None:
    document["annotations"][1]["image_id"] = 8


@pytest.mark.parametrize(("defect", "expected"), [
    (_with_extra_pixel, [("b.png", 4242, "in the PNG but not in segments_info")]),
    (_with_unlisted_segment, [("a.png", 77, "in segments_info but not in the PNG")]),
    (_with_unknown_category, [("a.png", 70000, "category_id 55 is not in the categories")]),
    (_with_wrong_size, [("b.png", None, "PNG is 2x2 but image 2 is 3x2 in the json")]),
    (_with_missing_png, [("a.png", None, "unreadable or missing")]),
    (_with_duplicate_segment, [("b.png", 256, "listed more than once in segments_info")]),
    (_with_unknown_image, [("b.png", None, "image_id 8 is not in images")]),
])
def test_each_problem_names_the_png_and_segment(tmp_path: Path, defect: Any,
                                                expected: list[tuple[str, int | None, str]]
                                                ) -> None:
    document = _document()
    pngs = {"a.png": A_IDS.copy(), "b.png": B_IDS.copy()}
    defect(document, pngs)
    problems = check_panoptic(*_write(tmp_path, document, pngs))
    assert [(p.file, p.segment_id) for p in problems] == [(f, s) for f, s, _ in expected]
    for problem, (_, _, message) in zip(problems, expected, strict=True):
        assert message in problem.message
        assert str(problem).startswith(problem.file)


def test_problem_text_names_file_and_segment() -> None:
    problem = PanopticProblem("a.png", 77, "in segments_info but not in the PNG")
    assert str(problem) == "a.png: segment 77: in segments_info but not in the PNG"
    assert str(PanopticProblem("b.png", None, "unreadable")) == "b.png: unreadable"


def test_unreadable_json_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"images": []}', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.json: not a COCO panoptic json"):
        check_panoptic(tmp_path / "bad.json", tmp_path)
