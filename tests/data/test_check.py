"""Dataset pre-flight: one broken copy of the synthetic set per defect class, --fix, the CLI."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.data import synth
from orchestrator.data.catalog import ResolvedData, ResolvedDataset
from orchestrator.data.check import (
    DEFECT_CLASSES,
    MAX_EXAMPLES,
    CheckReport,
    check_dataset,
    image_size,
    preflight,
    raise_for_errors,
)
from orchestrator.data.fix import Change, fix_dataset
from orchestrator.errors import InputError

Doc = dict[str, Any]
# The synthetic train split (6 images, seed 0): images 1..5, annotations 1..15; annotation 1
# is on image 1, 5 and 6..7 on image 2, and 15 is the only one on image 5. Categories 1..4.


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> synth.SyntheticSplit:
    made = synth.generate(tmp_path_factory.mktemp("synth") / "shapes", num_images=6, size=64,
                          seed=0)
    return made.train


class Dataset:
    """A private copy of the train split: its json as a dict, and a way to write variants."""

    def __init__(self, split: synth.SyntheticSplit, root: Path) -> None:
        self.images = root / "images"
        shutil.copytree(split.image_root, self.images)
        self.doc: Doc = json.loads(split.json_file.read_text(encoding="utf-8"))
        self.root = root

    def write(self, doc: Doc, name: str = "instances.json") -> Path:
        path = self.root / name
        path.write_text(json.dumps(doc), encoding="utf-8")
        return path

    def corrupt(self, how: Callable[[Doc, Path], None], name: str = "broken.json") -> Path:
        doc = copy.deepcopy(self.doc)
        how(doc, self.images)
        return self.write(doc, name)


@pytest.fixture
def data(shapes: synth.SyntheticSplit, tmp_path: Path) -> Dataset:
    return Dataset(shapes, tmp_path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- corruptions


def shift_categories(doc: Doc, by: int) -> None:
    for cat in doc["categories"]:
        cat["id"] += by
    for ann in doc["annotations"]:
        ann["category_id"] += by


def rename_category(doc: Doc, old: int, new: Any) -> None:
    next(c for c in doc["categories"] if c["id"] == old)["id"] = new
    for ann in (a for a in doc["annotations"] if a["category_id"] == old):
        ann["category_id"] = new


def set_ann(index: int, **values: Any) -> Callable[[Doc, Path], None]:
    return lambda doc, _: doc["annotations"][index].update(values)


def set_image(index: int, **values: Any) -> Callable[[Doc, Path], None]:
    return lambda doc, _: doc["images"][index].update(values)


def set_bbox_w(doc: Doc, _: Path) -> None:
    doc["annotations"][1]["bbox"][2] = 0


def garble_file(doc: Doc, images: Path) -> None:
    (images / "000003.png").write_bytes(b"this is not a png")


def duplicate_image(doc: Doc, _: Path) -> None:
    doc["images"].append({**doc["images"][0], "file_name": "000002.png"})


def drop_ann_15(doc: Doc, _: Path) -> None:
    doc["annotations"] = [a for a in doc["annotations"] if a["id"] != 15]


def del_ann_key(doc: Doc, _: Path) -> None:
    del doc["annotations"][0]["category_id"]


# (corruption, defect code, severity, count, [(image id, annotation id)] of the examples,
#  the exact set of error codes expected in the report)
CASES: dict[str, tuple[Callable[[Doc, Path], None], str, str, int, list[Any], set[str]]] = {
    "size": (set_image(0, width=65), "size_mismatch", "error", 1, [(1, None)],
             {"size_mismatch"}),
    "missing": (set_image(1, file_name="gone.png"), "missing_image", "error", 1, [(2, None)],
                {"missing_image"}),
    "unreadable": (garble_file, "unreadable_image", "error", 1, [(3, None)],
                   {"unreadable_image"}),
    "dup_image": (duplicate_image, "duplicate_image_id", "error", 1, [(1, None)],
                  {"duplicate_image_id"}),
    "dup_ann": (set_ann(5, id=1), "duplicate_annotation_id", "error", 1, [(2, 1)],
                {"duplicate_annotation_id"}),
    "dup_category": (lambda d, _: d["categories"].append({"id": 2, "name": "again"}),
                     "duplicate_category_id", "error", 1, [(None, None)],
                     {"duplicate_category_id"}),
    "zero_based": (lambda d, _: shift_categories(d, -1), "invalid_category_id", "error", 1,
                   [(None, None)], {"invalid_category_id"}),
    "negative": (lambda d, _: rename_category(d, 4, -4), "invalid_category_id", "error", 1,
                 [(None, None)], {"invalid_category_id"}),
    "non_integer": (lambda d, _: rename_category(d, 4, "star"), "invalid_category_id", "error",
                    1, [(None, None)], {"invalid_category_id"}),
    "gaps": (lambda d, _: rename_category(d, 4, 7), "noncontiguous_category_ids", "warning", 1,
             [(None, None)], set()),
    "unknown_image": (set_ann(0, image_id=99), "unknown_image", "error", 1, [(99, 1)],
                      {"unknown_image"}),
    "off_by_one": (set_ann(0, category_id=5), "unknown_category", "error", 1, [(1, 1)],
                   {"unknown_category"}),
    "zero_width": (set_bbox_w, "degenerate_box", "error", 1, [(1, 2)], {"degenerate_box"}),
    "no_bbox": (set_ann(1, bbox=None), "degenerate_box", "error", 1, [(1, 2)],
                {"degenerate_box"}),
    "overhang": (set_ann(2, bbox=[50.0, 50.0, 30.0, 10.0]), "box_outside_image", "error", 1,
                 [(1, 3)], {"box_outside_image"}),
    "two_points": (set_ann(4, segmentation=[[1, 1, 5, 5]]), "degenerate_polygon", "error", 1,
                   [(2, 5)], {"degenerate_polygon"}),
    "zero_area": (set_ann(4, segmentation=[[0, 0, 10, 10, 20, 20]]), "degenerate_polygon",
                  "error", 1, [(2, 5)], {"degenerate_polygon"}),
    "odd_coords": (set_ann(4, segmentation=[[0, 0, 10, 0, 10, 10, 5]]), "degenerate_polygon",
                   "error", 1, [(2, 5)], {"degenerate_polygon"}),
    "crowd": (set_ann(6, iscrowd=1), "crowd_annotation", "warning", 1, [(2, 7)], set()),
    "rle": (set_ann(6, segmentation=None), "rle_segmentation", "warning", 1, [(2, 7)], set()),
    "rle_counts": (set_ann(6, segmentation={"size": [64, 64], "counts": [100, 20, 5]}),
                   "invalid_rle", "error", 1, [(2, 7)], {"invalid_rle"}),
    "rle_size": (set_ann(6, segmentation=None), "invalid_rle", "error", 1, [(2, 7)],
                 {"invalid_rle"}),
    "no_segmentation": (set_ann(6, segmentation=None), "missing_segmentation", "error", 1,
                        [(2, 7)], {"missing_segmentation"}),
    "no_images": (lambda d, _: d.update(images=[], annotations=[]), "no_images", "error", 1,
                  [(None, None)], {"no_images"}),
    "unannotated": (drop_ann_15, "image_without_annotations", "warning", 1, [(5, None)], set()),
    "malformed": (del_ann_key, "malformed_record", "error", 1, [(None, 1)],
                  {"malformed_record"}),
}


def rle(height: int, width: int, *, on: int = 100) -> dict[str, Any]:
    """A compressed COCO RLE (pycocotools' own encoding) of a mask with ``on`` pixels set."""
    import numpy as np
    import pycocotools.mask as mask_util

    mask = np.zeros((height, width), dtype=np.uint8, order="F")
    mask.flat[:on] = 1
    encoded = mask_util.encode(np.asfortranarray(mask))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


# A valid RLE is only a warning; one at another size than its 64x64 image is an error.
CASES["rle"] = (set_ann(6, segmentation=rle(64, 64)), *CASES["rle"][1:])
CASES["rle_size"] = (set_ann(6, segmentation=rle(32, 64)), *CASES["rle_size"][1:])


def test_rle_counts_decode_like_pycocotools() -> None:
    from orchestrator.data.check import rle_problem

    for height, width, on in ((64, 64, 100), (7, 300, 2100), (480, 640, 12345), (5, 5, 0)):
        assert rle_problem(rle(height, width, on=on), (width, height)) is None
    broken = rle(64, 64)
    broken["counts"] = broken["counts"][:-2]
    assert "add up to" in str(rle_problem(broken, (64, 64)))
    assert "64x64" in str(rle_problem(rle(64, 64), (64, 32)))


def test_fix_drops_bad_masks_and_says_so(data: Dataset) -> None:
    def corrupt(doc: Doc, _: Path) -> None:
        doc["annotations"][6]["segmentation"] = {"size": [64, 64], "counts": [1, 2]}
        doc["annotations"][7]["segmentation"] = rle(32, 32)
        del doc["annotations"][8]["segmentation"]

    summary = fix_dataset(data.corrupt(corrupt), data.images, data.root / "fixed.json")
    drops = [c for c in summary.changes if c.kind == "drop_annotation"]
    assert [c.annotation_id for c in drops] == [7, 8, 9]
    assert "add up to 3" in drops[0].before and "32x32" in drops[1].before
    assert "no segmentation" in drops[2].before
    assert "drop_annotation x3" in summary.format()
    assert not check_dataset(data.root / "fixed.json", data.images).has_errors


def test_decode_finds_truncated_images(data: Dataset) -> None:
    path = data.images / "000004.png"
    path.write_bytes(path.read_bytes()[:-200])  # header intact, pixel data cut short
    instances = data.write(data.doc)
    assert check_dataset(instances, data.images).get("unreadable_image") is None
    report = check_dataset(instances, data.images, decode=True, workers=3)
    defect = report.get("unreadable_image")
    assert defect is not None and [e.image_id for e in defect.examples] == [4], report.format()
    result = CliRunner().invoke(app, ["data", "check", str(instances), "--images",
                                      str(data.images), "--decode"])
    assert result.exit_code == 2 and "unreadable_image" in result.output


def test_fix_onto_a_folder_exits_2(data: Dataset) -> None:
    instances = data.write(data.doc)
    for extra in ([], ["--overwrite"]):
        result = CliRunner().invoke(app, ["data", "check", str(instances), "--images",
                                          str(data.images), "--fix", str(data.root), *extra])
        assert result.exit_code == 2, result.output
        assert "is a folder" in result.output and result.exception is None or \
            isinstance(result.exception, SystemExit)


def test_clean_set_passes(data: Dataset) -> None:
    report = check_dataset(data.write(data.doc), data.images)
    assert report.defects == () and not report.has_errors
    assert (report.num_images, report.num_annotations, report.usable_images) == (5, 15, 5)
    assert "0 error(s), 0 warning(s)" in report.format()


@pytest.mark.parametrize("case", list(CASES))
def test_every_defect_class_is_found(data: Dataset, case: str) -> None:
    how, code, severity, count, where, errors = CASES[case]
    report = check_dataset(data.corrupt(how), data.images, workers=2)
    defect = report.get(code)
    assert defect is not None, report.format()
    assert (defect.severity, defect.count) == (severity, count)
    assert DEFECT_CLASSES[code].severity == severity
    assert [(e.image_id, e.annotation_id) for e in defect.examples] == where
    assert {d.code for d in report.errors} == errors, report.format()
    assert report.has_errors == bool(errors)


def test_every_defect_class_has_a_case() -> None:
    assert {case[1] for case in CASES.values()} == set(DEFECT_CLASSES)


def test_examples_are_capped_and_the_report_says_how_to_fix(data: Dataset) -> None:
    def all_ids_one(doc: Doc, _: Path) -> None:
        for ann in doc["annotations"]:
            ann["id"] = 1

    report = check_dataset(data.corrupt(all_ids_one), data.images)
    defect = report.get("duplicate_annotation_id")
    assert defect is not None and defect.count == 14 and len(defect.examples) == MAX_EXAMPLES
    text = report.format()
    assert "... and 9 more" in text
    assert f"--fix {data.root / 'broken.fixed.json'}" in text
    assert "image 1 (000001.png), annotation 1" in text


def test_exif_rotation_counts_as_the_real_size(data: Dataset) -> None:
    """detectron2's read_image applies EXIF orientation: a 64x32 JPEG tagged 6 is 32x64."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 32)).save(data.images / "rotated.jpg", exif=exif)
    assert image_size(data.images / "rotated.jpg") == (32, 64)

    def add(doc: Doc, _: Path) -> None:
        doc["images"].append({"id": 9, "file_name": "rotated.jpg", "width": 64, "height": 32})

    report = check_dataset(data.corrupt(add), data.images)
    assert report.counts == {"size_mismatch": 1, "image_without_annotations": 1}


def test_progress_and_workers(data: Dataset) -> None:
    seen: list[tuple[int, int]] = []
    path = data.corrupt(set_image(0, height=1))
    one = check_dataset(path, data.images, workers=1, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (5, 5)
    assert one == check_dataset(path, data.images, workers=4)


def test_bad_inputs_are_input_errors(data: Dataset) -> None:
    with pytest.raises(InputError, match="annotation file not found"):
        check_dataset(data.root / "nope.json", data.images)
    with pytest.raises(InputError, match="'categories' must be a list"):
        check_dataset(data.write({"images": [], "annotations": []}), data.images)
    with pytest.raises(InputError, match="image folder not found"):
        check_dataset(data.write(data.doc), data.root / "nope")


# --------------------------------------------------------------------------- fix


def break_everything(doc: Doc, images: Path) -> None:
    doc["images"][0]["width"] = 65                       # image_size
    doc["images"][1]["file_name"] = "gone.png"           # drop image 2 and annotations 5..7
    doc["images"].append({**doc["images"][2], "file_name": "000004.png"})  # duplicate id 3
    doc["annotations"][9]["id"] = 8                      # duplicate annotation id
    doc["annotations"][10]["category_id"] = 99           # unknown category: drop 11
    doc["annotations"][1]["bbox"][3] = -1.0              # degenerate box: drop 2
    doc["annotations"][2]["bbox"] = [50.0, 50.0, 30.0, 10.0]  # clipped to the image
    doc["annotations"][3]["segmentation"].append([1, 1, 2, 2])  # drop that polygon only
    shift_categories(doc, -1)                            # renumbered 0..3 -> 1..4


def test_fix_repairs_every_error_and_never_touches_the_input(data: Dataset) -> None:
    broken = data.corrupt(break_everything)
    before = sha256(broken)
    assert check_dataset(broken, data.images).has_errors
    summary = fix_dataset(broken, data.images, data.root / "fixed.json")
    assert sha256(broken) == before
    report = check_dataset(summary.out_file, data.images)
    assert not report.has_errors, report.format()
    assert summary.counts == {"renumber_category": 4, "drop_image": 2, "image_size": 1,
                              "drop_annotation": 5, "drop_polygon": 1, "clip_box": 1,
                              "renumber_annotation": 1}
    assert Change("image_size", image_id=1, before="65x64", after="64x64") in summary.changes
    assert Change("clip_box", 1, 3, before="[50.0, 50.0, 30.0, 10.0]",
                  after="[50.0, 50.0, 14.0, 10.0]") in summary.changes
    fixed = json.loads(summary.out_file.read_text(encoding="utf-8"))
    original = {a["id"]: a["category_id"] for a in data.doc["annotations"]}
    assert all(original[a["id"]] == a["category_id"] for a in fixed["annotations"]
               if a["id"] != 16)  # category ids are back to the original 1..4
    assert (summary.num_images, summary.num_annotations) == (4, 10)
    assert "image_size image 1: 65x64 -> 64x64" in summary.format()


def test_fix_refuses_to_overwrite(data: Dataset) -> None:
    broken = data.corrupt(set_image(0, width=65))
    out = data.root / "fixed.json"
    out.write_text("keep me", encoding="utf-8")
    with pytest.raises(InputError, match=str(out)):
        fix_dataset(broken, data.images, out)
    assert out.read_text(encoding="utf-8") == "keep me"
    with pytest.raises(InputError, match="never the input"):
        fix_dataset(broken, data.images, broken, overwrite=True)
    fix_dataset(broken, data.images, out, overwrite=True)
    assert not check_dataset(out, data.images).has_errors


def test_fix_writes_atomically(data: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    broken = data.corrupt(set_image(0, width=65))
    monkeypatch.setattr("orchestrator.data.fix.json.dump", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        fix_dataset(broken, data.images, data.root / "fixed.json")
    assert sorted(p.name for p in data.root.iterdir()) == ["broken.json", "images"]


def test_fixed_copy_passes_detectron2_size_check(data: Dataset) -> None:
    """What raised SizeMismatchError mid-run: every record against its decoded image."""
    pytest.importorskip("detectron2")
    from detectron2.data.datasets import load_coco_json
    from detectron2.data.detection_utils import SizeMismatchError, check_image_size, read_image

    def check_all(json_file: Path) -> None:
        for record in load_coco_json(str(json_file), str(data.images)):
            check_image_size(record, read_image(record["file_name"]))

    broken = data.corrupt(set_image(2, width=60, height=70))
    with pytest.raises(SizeMismatchError):
        check_all(broken)
    check_all(fix_dataset(broken, data.images, data.root / "fixed.json").out_file)


# --------------------------------------------------------------------------- submit pre-flight


def resolved(train: ResolvedDataset, test: ResolvedDataset | None) -> ResolvedData:
    return ResolvedData(train=train, test=test, usable_images=None, class_names=())


def test_preflight_checks_existing_datasets_and_maps_errors(data: Dataset) -> None:
    good = ResolvedDataset(name="good", json_file=str(data.write(data.doc)),
                           image_root=str(data.images))
    gone = ResolvedDataset(name="gone", json_file=str(data.root / "no.json"),
                           image_root=str(data.images))
    reports = preflight(resolved(good, gone))
    assert [r.json_file.name for r in reports] == ["instances.json"]
    raise_for_errors(reports)  # clean: nothing raised
    bad = ResolvedDataset(name="bad", json_file=str(data.corrupt(set_image(0, width=65))),
                          image_root=str(data.images))
    reports = preflight(resolved(good, bad))
    assert [r.has_errors for r in reports] == [False, True]
    with pytest.raises(InputError, match="size_mismatch") as caught:
        raise_for_errors(reports)
    assert caught.value.exit_code == 2


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


def cli(*args: Any) -> Any:
    return runner.invoke(app, ["data", "check", *map(str, args)])


def test_cli_exit_codes(data: Dataset) -> None:
    clean = cli(data.write(data.doc), "--images", data.images)
    assert clean.exit_code == 0, clean.output
    assert "ok: no errors" in clean.output
    warned = cli(data.corrupt(drop_ann_15, "warn.json"), "--images", data.images)
    assert warned.exit_code == 0, warned.output
    assert "image_without_annotations" in warned.output
    broken = cli(data.corrupt(set_image(0, width=65)), "--images", data.images, "--workers", 1)
    assert broken.exit_code == 2, broken.output
    flat = " ".join(broken.output.split())
    assert "size_mismatch" in flat and "--fix" in flat


def test_cli_fix(data: Dataset) -> None:
    broken = data.corrupt(break_everything)
    before = sha256(broken)
    out = data.root / "fixed.json"
    result = cli(broken, "--images", data.images, "--fix", out)
    assert result.exit_code == 0, result.output
    assert "image_size image 1: 65x64 -> 64x64" in result.output
    assert sha256(broken) == before and out.is_file()
    again = cli(broken, "--images", data.images, "--fix", out)
    assert again.exit_code == 2
    assert "already exists" in " ".join(again.output.split())
    assert cli(broken, "--images", data.images, "--fix", out, "--overwrite").exit_code == 0


def test_report_renders_as_a_table(data: Dataset) -> None:
    from rich.console import Console

    report: CheckReport = check_dataset(data.corrupt(set_image(0, width=65)), data.images)
    console = Console(width=200, record=True)
    console.print(report.table())
    assert "size_mismatch" in console.export_text()
