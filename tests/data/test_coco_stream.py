"""The streamed COCO reader gives json.load's document; the check's fast paths its findings."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from orchestrator.data import catalog
from orchestrator.data.check import (
    _all_numbers,
    _is_number,
    load_coco,
    open_coco,
    polygon_area,
)
from orchestrator.data.coco_stream import Irregular, stream_coco
from orchestrator.errors import InputError


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.randrange(-10**6, 10**6)
    if kind == 1:
        return rng.choice([rng.uniform(-1e3, 1e3), 1e300, -0.0, 12345678901234567890])
    if kind == 2:
        return rng.choice(["", "a", "é\u00e9x", 'q"uo\\te', "\u2603" * 3, "line\nbreak"])
    if kind in (3, 4):
        return rng.choice([True, False, None])
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {f"k{i}": _value(rng, depth + 1) for i in range(rng.randrange(4))}


def _document(rng: random.Random) -> dict[str, Any]:
    keys = ["images", "annotations", "categories", "info", "licenses"]
    rng.shuffle(keys)
    return {key: [_value(rng) for _ in range(rng.randrange(6))] if rng.random() < 0.8
            else _value(rng) for key in keys[:rng.randrange(6)]}


def test_streamed_document_equals_json_load(tmp_path: Path) -> None:
    """Any key order, layout and window size (down to one character) reads the same."""
    rng = random.Random(0)
    path = tmp_path / "doc.json"
    for _ in range(400):
        doc = _document(rng)
        layout = rng.choice([{}, {"indent": 2}, {"separators": (",", ":")},
                             {"ensure_ascii": False}])
        path.write_text(" \n" * rng.randrange(2) + json.dumps(doc, **layout), encoding="utf-8")
        coco = stream_coco(path, chunk=rng.choice([1, 2, 3, 7, 64, 1 << 20]))
        top = dict(coco.top)
        if coco.path is not None:
            top["annotations"] = list(coco.annotations())
        assert top == doc and list(top) == list(doc)
        annotations = doc.get("annotations")
        assert coco.num_annotations == (len(annotations) if isinstance(annotations, list)
                                        else 0)


@pytest.mark.parametrize("text", [
    "[1, 2]", '{"a": 1, "a": 2}', '{"a": 1} x', '{"a": 1,}', '\ufeff{"a": 1}',
    '{"annotations": [1, 2', '{"annotations": [1 2]}', '{"a" 1}', "", '{"images": [tru]}'])
def test_irregular_files_are_left_to_json_load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "odd.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(Irregular):
        stream_coco(path, chunk=3)


def test_check_reads_irregular_files_as_json_load_does(tmp_path: Path) -> None:
    """A key given twice (json.load keeps the last) and a BOM (an error) behave as before."""
    path = tmp_path / "twice.json"
    path.write_text('{"images": [1], "annotations": [], "categories": [], "images": []}',
                    encoding="utf-8")
    assert open_coco(path).top == load_coco(path)
    path.write_text('\ufeff{"images": [], "annotations": [], "categories": []}',
                    encoding="utf-8")
    with pytest.raises(InputError) as streamed:
        open_coco(path)
    with pytest.raises(InputError) as loaded:
        load_coco(path)
    assert str(streamed.value) == str(loaded.value) and "BOM" in str(loaded.value)


def test_a_file_changed_between_the_passes_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": [], "annotations": [{"id": 1}, {"id": 2}],
                                "categories": []}), encoding="utf-8")
    coco = stream_coco(path)
    path.write_text(json.dumps({"images": [], "annotations": [{"id": 1}],
                                "categories": []}), encoding="utf-8")
    with pytest.raises(InputError, match="changed while it was being read"):
        list(coco.annotations())


@pytest.mark.parametrize("annotations", [
    [{"image_id": 1}, {"image_id": 2, "iscrowd": 1}, {"image_id": 3, "iscrowd": 0}],
    [{"image_id": 1}, {"iscrowd": 0}],  # KeyError, as json.load's path raised it
    [{"image_id": 1}, [1, 2]],          # AttributeError
])
def test_summary_counts_as_before(tmp_path: Path, annotations: list[Any]) -> None:
    doc = {"annotations": annotations, "categories": [{"id": 2, "name": "b"},
                                                      {"id": 1, "name": "a"}],
           "images": [{"id": i} for i in (1, 2, 3, 4)]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    try:
        expected: Any = (catalog.count_usable_images(doc), ("a", "b"))
    except Exception as exc:  # noqa: BLE001 - the streamed path must raise the same
        expected = type(exc)
    if isinstance(expected, tuple):
        assert catalog._read_summary(path) == expected == (2, ("a", "b"))
    else:
        with pytest.raises(expected):
            catalog._read_summary(path)


def _slow_area(poly: list[float]) -> float:
    """The check's shoelace formula as it was written before (a Python loop)."""
    xs, ys = poly[0::2], poly[1::2]
    nxt_x, nxt_y = [*xs[1:], *xs[:1]], [*ys[1:], *ys[:1]]
    return abs(sum(x * y1 - x1 * y for x, y, x1, y1 in zip(xs, ys, nxt_x, nxt_y,
                                                            strict=True))) / 2


def test_fast_number_and_area_paths_agree_with_the_plain_ones() -> None:
    rng = random.Random(1)
    odd = [True, False, math.nan, math.inf, -math.inf, 1e308, 10**400, "1", None, 0, -0.0]
    for _ in range(3000):
        values = [rng.choice([rng.uniform(-1e3, 1e3), rng.randrange(-99, 99),
                              rng.choice(odd)]) for _ in range(rng.randrange(9))]
        try:
            expected: Any = all(_is_number(v) for v in values)
        except OverflowError:
            expected = OverflowError
        if expected is OverflowError:
            with pytest.raises(OverflowError):
                _all_numbers(values)
        else:
            assert _all_numbers(values) == expected, values
        poly = [rng.choice([rng.uniform(-50, 50), float(rng.randrange(9)), rng.randrange(9),
                            1e-9 * rng.random()]) for _ in range(2 * rng.randrange(3, 9))]
        assert polygon_area(poly) == _slow_area(poly)
