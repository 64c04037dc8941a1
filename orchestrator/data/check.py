"""Dataset pre-flight: find what would break or silently distort training, before it starts.

A wrong width/height in a COCO json only surfaces as ``SizeMismatchError`` when the data loader
reaches that image, hours into a run; off-by-one category ids and missing files fail the same
way. This module reads the json and only the *headers* of the images (``PIL.Image.open().size``,
no pixel decoding, in a thread pool), so a 100k-image set is checked in minutes.

Pure Python + Pillow (no torch, detectron2 or Ray): it runs on the driver before any worker.
``orchestrator.data.fix`` writes a corrected copy using the same rules.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from orchestrator.data.coco_stream import CocoFile, stream_coco
from orchestrator.errors import InputError

if TYPE_CHECKING:
    from rich.table import Table

    from orchestrator.data.catalog import ResolvedData

__all__ = [
    "Severity",
    "DefectClass",
    "DEFECT_CLASSES",
    "Example",
    "Defect",
    "CheckReport",
    "check_dataset",
    "preflight",
    "raise_for_errors",
    "load_coco",
    "open_coco",
    "image_size",
    "scan_image_sizes",
    "default_workers",
    "file_problem",
    "bbox_problem",
    "polygon_problem",
    "rle_problem",
    "polygon_area",
    "is_id",
]

Severity = Literal["error", "warning"]
Progress = Callable[[int, int], None]
Size = tuple[int, int]

MAX_EXAMPLES = 5
# Boxes may overhang the image by rounding; more than this is a labelling or size error.
BOX_TOLERANCE = 1.0
# Below this (in px^2) a polygon rasterises to nothing: treat it as zero area.
MIN_POLYGON_AREA = 1e-6
# EXIF orientations that rotate by 90 degrees: detectron2's read_image applies them.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112
_PLAIN_NUMBERS = frozenset({int, float})  # exactly these types: bool is not one


@dataclass(frozen=True)
class DefectClass:
    """One kind of defect: how bad it is, what it means and how to fix it."""

    code: str
    severity: Severity
    title: str
    fix: str


_FIX = "`data check --fix`"
DEFECT_CLASSES: dict[str, DefectClass] = {d.code: d for d in (
    DefectClass("malformed_record", "error", "record lacks a required field or has a wrong type",
                "images need id, file_name, width, height; annotations need id, image_id, "
                f"category_id, bbox; categories need id and name ({_FIX} drops the rest)"),
    DefectClass("size_mismatch", "error", "width/height differ from the image file "
                "(detectron2 raises SizeMismatchError)",
                f"set width/height to the real size; {_FIX} reads them from the image headers"),
    DefectClass("missing_image", "error", "image file not found under the image folder",
                "check that --images is the folder file_name is relative to, restore the file, "
                f"or drop the image ({_FIX} drops it and its annotations)"),
    DefectClass("unreadable_image", "error", "image file cannot be opened as an image",
                f"replace the corrupt file, or drop the image ({_FIX} drops it)"),
    DefectClass("duplicate_image_id", "error", "two images share an id",
                f"give every image a unique id; {_FIX} keeps the first and drops the others"),
    DefectClass("duplicate_annotation_id", "error", "two annotations share an id",
                f"give every annotation a unique id; {_FIX} renumbers the later ones"),
    DefectClass("duplicate_category_id", "error", "two categories share an id",
                f"give every category a unique id; {_FIX} keeps the first"),
    DefectClass("invalid_category_id", "error", "category id is not a positive integer "
                "(0 is background by COCO convention)",
                f"number categories 1..K; {_FIX} renumbers them in id order and remaps "
                "the annotations"),
    DefectClass("unknown_image", "error", "annotation points at an image id not in 'images'",
                f"fix its image_id or remove it; {_FIX} drops it"),
    DefectClass("unknown_category", "error", "annotation points at a category id not in "
                "'categories' (an off-by-one category id?)",
                f"fix its category_id or add the category; {_FIX} drops it"),
    DefectClass("degenerate_box", "error", "bbox is not [x, y, w, h] with w > 0 and h > 0 "
                "inside the image",
                f"fix or remove the annotation; {_FIX} drops it"),
    DefectClass("box_outside_image", "error", f"bbox extends more than {BOX_TOLERANCE:g} px "
                "outside the image (detectron2 clips it silently)",
                f"check the box and the image size; {_FIX} clips it to the image"),
    DefectClass("degenerate_polygon", "error", "polygon with fewer than 3 points, an odd "
                "number of coordinates or zero area (detectron2 drops it)",
                f"fix the polygon; {_FIX} drops it (and the annotation if none is left)"),
    DefectClass("no_images", "error", "the json lists no images",
                "point data at the right annotation file, or add the images"),
    DefectClass("invalid_rle", "error", "RLE mask whose counts do not add up to "
                "height x width, or whose size is not the image size (pycocotools decodes "
                "garbage or fails)", f"re-export the mask at the image size; {_FIX} drops it"),
    DefectClass("missing_segmentation", "error", "annotation without a segmentation: every "
                "model here (Mask R-CNN, BlendMask, CondInst) trains masks, and detectron2 "
                "fails on an instance without one",
                f"add the mask (polygon or RLE); {_FIX} drops the annotation"),
    DefectClass("noncontiguous_category_ids", "warning", "category ids have gaps; detectron2 "
                "remaps them to [0, K) in sorted order",
                "fine for COCO json files; dataset dicts built by hand need ids in [0, K)"),
    DefectClass("crowd_annotation", "warning", "iscrowd=1: ignored for training, used only as "
                "an ignore region in evaluation", "nothing to do if intended"),
    DefectClass("rle_segmentation", "warning", "non-crowd RLE mask: needs "
                "INPUT.MASK_FORMAT=bitmask (the default 'polygon' fails)",
                "set INPUT.MASK_FORMAT bitmask in model.opts, or convert to polygons"),
    DefectClass("image_without_annotations", "warning", "image has no usable annotation: "
                "detectron2 drops it from training",
                "nothing to do if intended (COCO train2017 has 1,021 such images)"),
)}


@dataclass(frozen=True)
class Example:
    """Where one defect is: ids as written in the json, plus what exactly is wrong."""

    image_id: Any = None
    file_name: str | None = None
    annotation_id: Any = None
    detail: str = ""

    def describe(self) -> str:
        where = []
        if self.image_id is not None or self.file_name is not None:
            name = f" ({self.file_name})" if self.file_name else ""
            where.append(f"image {self.image_id!r}{name}")
        if self.annotation_id is not None:
            where.append(f"annotation {self.annotation_id!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.detail}" if prefix else self.detail


@dataclass(frozen=True)
class Defect:
    """A defect class found in a dataset: how many times, and the first few places."""

    kind: DefectClass
    count: int
    examples: tuple[Example, ...]

    @property
    def code(self) -> str:
        return self.kind.code

    @property
    def severity(self) -> Severity:
        return self.kind.severity


@dataclass(frozen=True, kw_only=True)
class CheckReport:
    """Everything found in one COCO file, in ``DEFECT_CLASSES`` order."""

    json_file: Path
    image_root: Path
    num_images: int
    num_annotations: int
    usable_images: int
    defects: tuple[Defect, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        return {d.code: d.count for d in self.defects}

    @property
    def errors(self) -> tuple[Defect, ...]:
        return tuple(d for d in self.defects if d.severity == "error")

    @property
    def warnings(self) -> tuple[Defect, ...]:
        return tuple(d for d in self.defects if d.severity == "warning")

    @property
    def has_errors(self) -> bool:
        return bool(self.errors)

    def get(self, code: str) -> Defect | None:
        return next((d for d in self.defects if d.code == code), None)

    def fix_command(self) -> str:
        out = self.json_file.with_name(f"{self.json_file.stem}.fixed.json")
        return (f"orchestrator data check {self.json_file} --images {self.image_root} "
                f"--fix {out}")

    def summary(self) -> str:
        errors = sum(d.count for d in self.errors)
        warnings = sum(d.count for d in self.warnings)
        return (f"{self.json_file}: {self.num_images} images, {self.num_annotations} "
                f"annotations, {self.usable_images} usable images; "
                f"{errors} error(s), {warnings} warning(s)")

    def format(self) -> str:
        """Plain text: what is wrong, where (first examples) and how to fix it."""
        lines = [self.summary()]
        for d in self.defects:
            lines.append(f"  {d.severity} {d.code} x{d.count}: {d.kind.title}")
            lines.extend(f"    - {e.describe()}" for e in d.examples)
            if d.count > len(d.examples):
                lines.append(f"    - ... and {d.count - len(d.examples)} more")
            lines.append(f"    fix: {d.kind.fix}")
        if self.has_errors:
            lines.append(f"  to write a corrected copy: {self.fix_command()}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (ids as written in the json keep their types): ``from_dict``
        gives back an equal report, so a cached one prints exactly as a fresh one."""
        return {"json_file": str(self.json_file), "image_root": str(self.image_root),
                "num_images": self.num_images, "num_annotations": self.num_annotations,
                "usable_images": self.usable_images,
                "defects": [{"code": d.code, "count": d.count,
                             "examples": [asdict(e) for e in d.examples]}
                            for d in self.defects]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CheckReport:
        defects = tuple(Defect(DEFECT_CLASSES[d["code"]], d["count"],
                               tuple(Example(**e) for e in d["examples"]))
                        for d in raw["defects"])
        return cls(json_file=Path(raw["json_file"]), image_root=Path(raw["image_root"]),
                   num_images=raw["num_images"], num_annotations=raw["num_annotations"],
                   usable_images=raw["usable_images"], defects=defects)

    def table(self) -> Table:
        """The same content as ``format()`` as a rich table, for terminals."""
        from rich.table import Table
        from rich.text import Text

        table = Table(title=self.summary(), title_justify="left", show_lines=True)
        for name in ("severity", "defect", "count", "first examples", "how to fix"):
            table.add_column(name, overflow="fold")
        for d in self.defects:
            colour = "red" if d.severity == "error" else "yellow"
            examples = "\n".join(e.describe() for e in d.examples[:3])
            table.add_row(Text(d.severity, style=colour), f"{d.code}\n{d.kind.title}",
                          str(d.count), examples, d.kind.fix)
        return table


# --------------------------------------------------------------------------- collecting


class _Found:
    """Counts per defect class, keeping the first ``MAX_EXAMPLES`` examples of each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[Example]] = {}

    def add(self, code: str, example: Example) -> None:
        assert code in DEFECT_CLASSES, code
        self.counts[code] += 1
        kept = self.examples.setdefault(code, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(example)

    def defects(self) -> tuple[Defect, ...]:
        return tuple(Defect(kind, self.counts[code], tuple(self.examples[code]))
                     for code, kind in DEFECT_CLASSES.items() if self.counts[code])


# --------------------------------------------------------------------------- small predicates


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_id(value: Any) -> bool:
    """Usable as an id: hashable and not a float/bool (1.0 and True would alias 1)."""
    kind = type(value)
    if kind is int or kind is str:  # what json gives, tested first
        return True
    return isinstance(value, int | str) and not isinstance(value, bool)


def _all_numbers(values: list[Any]) -> bool:
    """``all(map(_is_number, values))``, at C speed for the usual list of plain floats and
    ints with a finite sum; anything else (bools, inf, NaN, an overflowing sum, huge ints)
    takes the exact element-by-element path."""
    if set(map(type, values)) <= _PLAIN_NUMBERS:
        try:
            if math.isfinite(sum(values)):
                return True
        except OverflowError:
            pass
    return all(map(_is_number, values))


def polygon_area(poly: Sequence[float]) -> float:
    """Shoelace area of a flat [x0, y0, x1, y1, ...] polygon."""
    xs, ys = list(poly[0::2]), list(poly[1::2])
    if len(xs) != len(ys):
        raise ValueError(f"polygon has an odd number of coordinates ({len(poly)})")
    nxt_x, nxt_y = xs[1:] + xs[:1], ys[1:] + ys[:1]
    # sum of x * y1 - x1 * y, term by term in order: the same float as a Python loop
    return abs(sum(map(operator.sub, map(operator.mul, xs, nxt_y),
                       map(operator.mul, nxt_x, ys)))) / 2


def polygon_problem(poly: Any) -> str | None:
    """Why detectron2 would drop this polygon (it keeps even-length lists of >= 6 numbers)."""
    if not isinstance(poly, list) or not _all_numbers(poly):
        return f"polygon is not a flat list of numbers: {_short(poly)}"
    if len(poly) % 2:
        return f"polygon has an odd number of coordinates ({len(poly)})"
    if len(poly) < 6:
        return f"polygon has {len(poly) // 2} points (needs at least 3)"
    if polygon_area(poly) < MIN_POLYGON_AREA:
        return f"polygon has zero area: {_short(poly)}"
    return None


def bbox_problem(bbox: Any, size: Size) -> tuple[str, str] | None:
    """(defect code, detail) for a COCO [x, y, w, h] box in an image of ``size``, or None."""
    width, height = size
    if not isinstance(bbox, list) or len(bbox) != 4 or not _all_numbers(bbox):
        return "degenerate_box", f"bbox {_short(bbox)} is not 4 finite numbers"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "degenerate_box", f"bbox {bbox} has w={w:g}, h={h:g}"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "degenerate_box", f"bbox {bbox} lies entirely outside the {width}x{height} image"
    tol = BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return "box_outside_image", f"bbox {bbox} extends outside the {width}x{height} image"
    return None


def _rle_counts(counts: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``)."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                return None
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                return None
            value |= (c & 0x1F) << 5 * shift
            more = bool(c & 0x20)
            pos, shift = pos + 1, shift + 1
            if not more and c & 0x10:
                value |= -1 << 5 * shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def rle_problem(segm: dict[str, Any], size: Size) -> str | None:
    """Why a COCO RLE mask does not fit an image of ``size`` (width, height), or None."""
    width, height = size
    shape = segm.get("size")
    if not isinstance(shape, list) or len(shape) != 2 or not all(map(_is_int, shape)):
        return f"RLE size {_short(shape)} is not [height, width]"
    if shape != [height, width]:
        return f"RLE size is {shape[0]}x{shape[1]} (h x w), the image is {height}x{width}"
    counts = segm.get("counts")
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    runs = _rle_counts(counts) if isinstance(counts, str) else counts
    if not isinstance(runs, list) or not all(_is_int(r) and r >= 0 for r in runs):
        return f"RLE counts {_short(counts)} are not run lengths"
    if sum(runs) != height * width:
        return f"RLE counts add up to {sum(runs)}, not height x width = {height * width}"
    return None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- files


def load_coco(json_file: Path) -> dict[str, Any]:
    """Read a COCO instances file; InputError names the file and what is missing."""
    try:
        with Path(json_file).open(encoding="utf-8") as f:
            coco = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{json_file}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{json_file}: cannot read COCO json: {exc}") from None
    _require_lists(json_file, coco)
    return coco


def _require_lists(json_file: Path, coco: Any) -> None:
    if not isinstance(coco, dict):
        raise InputError(f"{json_file}: not a COCO instances file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise InputError(f"{json_file}: not a COCO instances file: '{key}' must be a list "
                             f"(got {type(coco.get(key)).__name__})")


def open_coco(json_file: Path) -> CocoFile:
    """``load_coco`` with the annotations left in the file, read one at a time when the check
    gets to them (a few hundred MB instead of 2 GiB at COCO size). Files the streaming reader
    does not take are loaded whole, so contents and errors are ``load_coco``'s either way."""
    try:
        coco = stream_coco(json_file)
    except (OSError, ValueError):
        return CocoFile.loaded(load_coco(json_file))
    _require_lists(json_file, coco.top)
    return coco


def image_size(path: Path) -> Size:
    """(width, height) as detectron2's ``read_image`` will see it: header only, EXIF applied."""
    with Image.open(path) as im:
        width, height = im.size
        # getexif() would decode a PNG to look for a late eXIf chunk: ask only when it is cheap.
        if "exif" in im.info or hasattr(im, "tag_v2"):
            if im.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
                return height, width
    return width, height


def _read_size(path: Path, decode: bool = False) -> Size | BaseException:
    try:
        size = image_size(path)
        if decode:  # every pixel, as the data loader will: finds truncated files
            with Image.open(path) as im:
                im.load()
        return size
    except Exception as exc:  # any failure here is a failure in the data loader later
        return exc


def default_workers() -> int:
    """ThreadPoolExecutor's own default: header reads are I/O bound, not CPU bound."""
    return min(32, (os.cpu_count() or 1) + 4)


def scan_image_sizes(paths: Sequence[Path], *, workers: int | None = None,
                     progress: Progress | None = None,
                     decode: bool = False) -> list[Size | BaseException]:
    """Header sizes of ``paths`` in order, or the exception reading each one raised.

    ``decode`` also decodes every pixel (slower; Pillow releases the GIL while decoding, so
    the threads run in parallel) to find truncated or corrupt image data.

    Threads overlap the file-system latency (NFS, cold caches); batches keep the number of
    pending futures bounded so 100k+ images stream through in constant memory.
    """
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    results: list[Size | BaseException] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="data-check") as pool:
        batch = max(256, 32 * workers)
        for start in range(0, len(paths), batch):
            results.extend(pool.map(_read_size, paths[start:start + batch],
                                    [decode] * len(paths[start:start + batch])))
            if progress is not None:
                progress(len(results), len(paths))
    return results


def file_problem(result: Size | BaseException) -> tuple[str, str] | None:
    """(defect code, detail) for a failed header read, None for a size."""
    if isinstance(result, FileNotFoundError):
        return "missing_image", "file not found"
    if isinstance(result, BaseException):
        return "unreadable_image", f"{type(result).__name__}: {result}"
    return None


# --------------------------------------------------------------------------- the checks


def _check_categories(categories: list[Any], found: _Found) -> set[Hashable]:
    """Report bad category ids; return every id annotations may refer to."""
    ids: set[Hashable] = set()
    for cat in categories:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), Hashable) \
                or "id" not in cat or "name" not in cat:
            found.add("malformed_record", Example(detail=f"category {_short(cat)} needs an "
                                                         "id and a name"))
            continue
        cid = cat["id"]
        name = f"category {cid!r} ({cat.get('name')})"
        if not _is_int(cid) or cid <= 0:
            found.add("invalid_category_id", Example(detail=f"{name}: id must be an integer >= 1"))
        if cid in ids:
            found.add("duplicate_category_id", Example(detail=f"{name}: id used before"))
        ids.add(cid)
    positive = [c for c in ids if isinstance(c, int) and not isinstance(c, bool) and c > 0]
    _check_contiguous(sorted(positive), found)
    return ids


def _check_contiguous(ids: list[int], found: _Found) -> None:
    gaps = [f"{a + 1}..{b - 1}" if b - a > 2 else str(a + 1)
            for a, b in zip(ids, ids[1:], strict=False) if b != a + 1]
    if gaps:
        found.add("noncontiguous_category_ids", Example(
            detail=f"{len(ids)} ids in {ids[0]}..{ids[-1]}, none for {', '.join(gaps[:5])}"))


def _image_record_problem(img: Any) -> str | None:
    if not isinstance(img, dict):
        return f"image record is not an object: {_short(img)}"
    if not is_id(img.get("id")):
        return f"image id {img.get('id')!r} is not an integer or string"
    if not isinstance(img.get("file_name"), str) or not img["file_name"]:
        return f"file_name {img.get('file_name')!r} is not a non-empty string"
    for key in ("width", "height"):
        if not _is_int(img.get(key)) or img[key] <= 0:
            return f"{key} {img.get(key)!r} is not a positive integer"
    return None


def _check_images(images: list[Any], found: _Found) -> dict[Hashable, dict[str, Any]]:
    """Report malformed records and duplicate ids; return the first record of each id."""
    first: dict[Hashable, dict[str, Any]] = {}
    for img in images:
        problem = _image_record_problem(img)
        if problem is not None:
            record = img if isinstance(img, dict) else {}
            name = record.get("file_name")
            found.add("malformed_record", Example(
                record.get("id") if is_id(record.get("id")) else None,
                name if isinstance(name, str) else None, None, problem))
        elif img["id"] in first:
            found.add("duplicate_image_id", Example(
                img["id"], img["file_name"],
                detail=f"id already used by {first[img['id']]['file_name']}"))
        else:
            first[img["id"]] = img
    return first


def _check_files(images: dict[Hashable, dict[str, Any]], image_root: Path, found: _Found, *,
                 workers: int | None, progress: Progress | None,
                 decode: bool = False) -> dict[Hashable, Size]:
    """Read every image header; report missing, unreadable and mis-sized images."""
    records = list(images.values())
    results = scan_image_sizes([image_root / r["file_name"] for r in records], workers=workers,
                               progress=progress, decode=decode)
    sizes: dict[Hashable, Size] = {}
    for img, result in zip(records, results, strict=True):
        problem = file_problem(result)
        if problem is not None:
            found.add(problem[0], Example(img["id"], img["file_name"], detail=problem[1]))
            continue
        assert isinstance(result, tuple)
        sizes[img["id"]] = result
        if result != (img["width"], img["height"]):
            found.add("size_mismatch", Example(
                img["id"], img["file_name"], detail=f"json says {img['width']}x{img['height']}, "
                f"the file is {result[0]}x{result[1]}"))
    return sizes


def _annotation_record_problem(ann: Any) -> str | None:
    if not isinstance(ann, dict):
        return f"annotation is not an object: {_short(ann)}"
    for key in ("id", "image_id", "category_id"):
        if not is_id(ann.get(key)):
            return f"{key} {ann.get(key)!r} is missing or not an integer"
    return None


def _check_geometry(ann: dict[str, Any], size: Size, example: Callable[[str], Example],
                    found: _Found) -> bool:
    """Box and polygons of one non-crowd annotation; True when it survives ``--fix``."""
    usable = True
    segm = ann.get("segmentation")
    if segm is None:
        found.add("missing_segmentation", example("no segmentation"))
        usable = False
    elif isinstance(segm, dict):
        problem = rle_problem(segm, size)
        if problem:
            found.add("invalid_rle", example(problem))
            usable = False
        else:
            found.add("rle_segmentation", example("RLE mask on a non-crowd annotation"))
    elif isinstance(segm, list):
        problems = [p for p in map(polygon_problem, segm) if p] if segm else ["no polygons"]
        for problem in problems:
            found.add("degenerate_polygon", example(problem))
        usable = len(problems) < len(segm)
    else:
        found.add("malformed_record", example(f"segmentation is a {type(segm).__name__}"))
        usable = False
    box = bbox_problem(ann.get("bbox"), size)
    if box is not None:
        found.add(box[0], example(box[1]))
    return usable and (box is None or box[0] == "box_outside_image")


def _check_annotation(ann: Any, images: dict[Hashable, dict[str, Any]],
                      sizes: dict[Hashable, Size], categories: set[Hashable],
                      found: _Found) -> bool:
    """Check one annotation; True when it is a training instance (non-crowd, survives --fix)."""
    problem = _annotation_record_problem(ann)
    if problem is not None:
        record = ann if isinstance(ann, dict) else {}
        found.add("malformed_record", Example(
            annotation_id=record.get("id") if is_id(record.get("id")) else None,
            detail=problem))
        return False
    img = images.get(ann["image_id"])

    def example(detail: str) -> Example:
        name = img["file_name"] if img is not None else None
        return Example(ann["image_id"], name, ann["id"], detail)

    if img is None:
        found.add("unknown_image", example(f"image_id {ann['image_id']!r} is not in 'images'"))
        return False
    if ann["category_id"] not in categories:
        found.add("unknown_category", example(f"category_id {ann['category_id']!r} is not in "
                                              "'categories'"))
        return False
    size = sizes.get(ann["image_id"], (img["width"], img["height"]))
    if ann.get("iscrowd", 0):
        found.add("crowd_annotation", example("iscrowd=1"))
        segm = ann.get("segmentation")
        problem = rle_problem(segm, size) if isinstance(segm, dict) else None
        if problem:  # evaluation decodes crowd regions too
            found.add("invalid_rle", example(problem))
        return False
    return _check_geometry(ann, size, example, found)


def _check_annotations(annotations: Iterable[Any], images: dict[Hashable, dict[str, Any]],
                       sizes: dict[Hashable, Size], categories: set[Hashable],
                       found: _Found) -> set[Hashable]:
    """Check every annotation and duplicate ids; return the ids of images with a usable one."""
    seen: set[Hashable] = set()
    usable: set[Hashable] = set()
    for ann in annotations:
        if isinstance(ann, dict) and is_id(ann.get("id")):
            if ann["id"] in seen:
                img = images.get(ann["image_id"]) if is_id(ann.get("image_id")) else None
                found.add("duplicate_annotation_id", Example(
                    ann.get("image_id"), img["file_name"] if img else None, ann["id"],
                    "id used by an earlier annotation"))
            seen.add(ann["id"])
        if _check_annotation(ann, images, sizes, categories, found):
            usable.add(ann["image_id"])
    return usable


def _check_unannotated(images: dict[Hashable, dict[str, Any]], usable: set[Hashable],
                       found: _Found) -> None:
    for image_id, img in images.items():
        if image_id not in usable:
            found.add("image_without_annotations",
                      Example(image_id, img["file_name"], detail="no usable annotation"))


def check_dataset(json_file: Path, image_root: Path, *, workers: int | None = None,
                  progress: Progress | None = None, decode: bool = False) -> CheckReport:
    """Check a COCO instances file against the images under ``image_root``.

    ``workers`` threads read image headers (default: ThreadPoolExecutor's); ``progress`` is
    called with (images read, images in total) as the scan advances; ``decode`` decodes every
    image in full (finds truncated files; slower).
    """
    json_file, image_root = Path(json_file), Path(image_root)
    coco = open_coco(json_file)
    if not image_root.is_dir():
        raise InputError(f"{image_root}: image folder not found (give the folder the json's "
                         "file_name are relative to)")
    found = _Found()
    top = coco.top
    if not top["images"]:
        found.add("no_images", Example(detail="'images' is empty"))
    categories = _check_categories(top["categories"], found)
    images = _check_images(top["images"], found)
    sizes = _check_files(images, image_root, found, workers=workers, progress=progress,
                         decode=decode)
    usable = _check_annotations(coco.annotations(), images, sizes, categories, found)
    _check_unannotated(images, usable, found)
    return CheckReport(json_file=json_file, image_root=image_root,
                       num_images=len(top["images"]), num_annotations=coco.num_annotations,
                       usable_images=len(usable), defects=found.defects())


# --------------------------------------------------------------------------- submit pre-flight


def preflight(data: ResolvedData, *, workers: int | None = None,
              progress: Progress | None = None, cache: Path | None = None,
              note: Callable[[str], None] | None = None) -> list[CheckReport]:
    """Check the train and test datasets of a resolved spec (those whose files exist).

    Missing files are ``prepare()``'s to report; this catches what is wrong inside them.
    ``cache`` reuses the report of a dataset checked before and unchanged since
    (``check_cache.cached_check``; ``note`` hears about it).
    """
    from orchestrator.data.check_cache import cached_check

    reports = []
    for ds in (data.train, data.test):
        if ds is not None and ds.exists:
            reports.append(cached_check(Path(ds.json_file), Path(ds.image_root), cache=cache,
                                        workers=workers, progress=progress, note=note))
    return reports


def raise_for_errors(reports: Iterable[CheckReport]) -> None:
    """InputError (exit 2) with the full report of every dataset that has error defects."""
    bad = [r for r in reports if r.has_errors]
    if bad:
        details = "\n".join(r.format() for r in bad)
        raise InputError(f"data check failed:\n{details}\n"
                         "(fix the data, or pass --skip-data-check to train anyway)")
