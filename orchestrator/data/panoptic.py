"""COCO panoptic files on disk: segment-id PNGs, the derived stuff maps, a consistency check.

COCO panoptic annotations are a json (``images``, ``annotations`` with one ``segments_info``
list and one PNG ``file_name`` per image, ``categories`` with ``isthing``) plus a folder of RGB
PNGs whose colour encodes the segment id: ``id = R + 256 G + 256^2 B``, 0 being unlabeled.

Panoptic FPN trains its semantic head on a "separated" stuff map per image, derived from the
PNG by the rule detectron2's ``prepare_panoptic_fpn.py`` applies: every thing category becomes
0, the stuff categories become 1..N in the order of the category list, unlabeled pixels (and
ids without a segment) become 255, the ignore label. Datasets rarely ship these maps, so we
write them once, atomically, next to the data.

Pure numpy + Pillow: it runs on the driver during pre-flight, before any worker starts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from orchestrator.errors import InputError

__all__ = [
    "IGNORE_LABEL",
    "MAX_STUFF",
    "PanopticProblem",
    "DeriveResult",
    "rgb_to_ids",
    "ids_to_rgb",
    "read_panoptic_png",
    "write_panoptic_png",
    "semantic_ids",
    "semantic_map",
    "write_semantic_maps",
    "check_panoptic",
    "PanopticIndex",
    "panoptic_index",
    "panoptic_categories",
]

IGNORE_LABEL = 255
MAX_STUFF = 254  # stuff ids 1..254 must stay clear of the ignore label in a uint8 map
_ID_LIMIT = 256**3  # ids beyond this do not fit three 8-bit channels
_COLOUR_MODES = ("RGB", "RGBA", "P")  # modes whose pixels are colours; "L" or "I" would not be

IdMap = npt.NDArray[np.uint32]
Segments = Sequence[Mapping[str, Any]]


def rgb_to_ids(rgb: npt.ArrayLike) -> IdMap:
    """Segment ids of an ``(H, W, 3)`` colour array: ``R + 256 G + 256^2 B``."""
    pixels = np.asarray(rgb).astype(np.uint32)
    return pixels[..., 0] + 256 * pixels[..., 1] + 256 * 256 * pixels[..., 2]


def ids_to_rgb(ids: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """The inverse of ``rgb_to_ids``; ids must be in [0, 256^3)."""
    values = np.asarray(ids).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= _ID_LIMIT):
        raise ValueError(f"segment ids must lie in [0, 256**3) to be stored as colours, got "
                         f"{values.min()}..{values.max()}")
    return np.stack([values % 256, values // 256 % 256, values // 65536], axis=-1).astype(np.uint8)


def read_panoptic_png(path: Path) -> IdMap:
    """The ``(H, W)`` segment-id map of a panoptic PNG.

    Raises:
        InputError: the file cannot be read, or its pixels are not colours (a grayscale map
            would decode to wrong ids without any error).
    """
    try:
        with Image.open(path) as image:
            if image.mode not in _COLOUR_MODES:
                raise InputError(f"{path}: a panoptic PNG must be RGB (ids as colours), got mode "
                                 f"{image.mode!r}; re-export it as RGB")
            rgb = np.asarray(image.convert("RGB"))
    except OSError as error:
        raise InputError(f"{path}: cannot read the panoptic PNG ({error})") from error
    return rgb_to_ids(rgb)


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary name in ``path``'s folder, removed unless the caller renamed it: a crash
    leaves no half-written file under the final name and no stray ``.png`` either."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _save_png_atomic(pixels: npt.NDArray[np.uint8], path: Path) -> None:
    """Write, flush to disk, then rename into place: ``path`` exists only whole."""
    with _temporary_beside(path) as tmp:
        with open(tmp, "wb") as out:
            Image.fromarray(pixels).save(out, format="PNG")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a dataset is shared
        os.replace(tmp, path)


def write_panoptic_png(path: Path, ids: npt.ArrayLike) -> None:
    """Store an ``(H, W)`` id map as a COCO panoptic PNG, atomically."""
    _save_png_atomic(ids_to_rgb(ids), path)


def semantic_ids(categories: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Category id -> value in the separated stuff map: things 0, stuff 1..N in list order.

    Raises:
        InputError: a category without ``isthing`` 0/1, or more stuff than a uint8 map holds.
    """
    mapping: dict[int, int] = {}
    stuff = 0
    for category in categories:
        if category.get("isthing") not in (0, 1):
            raise InputError(f"category {category.get('id')} ({category.get('name')}): "
                             f"isthing must be 0 or 1, got {category.get('isthing')!r}")
        if not category["isthing"]:
            stuff += 1
        mapping[int(category["id"])] = stuff if not category["isthing"] else 0
    if stuff > MAX_STUFF:
        raise InputError(f"{stuff} stuff categories; a stuff map holds at most {MAX_STUFF}")
    return mapping


def semantic_map(ids: npt.ArrayLike, segments: Segments, mapping: Mapping[int, int], *,
                 where: str = "image") -> npt.NDArray[np.uint8]:
    """The separated stuff map of one image: each segment's pixels get its category's value
    from ``semantic_ids``; unlabeled pixels and ids without a segment get ``IGNORE_LABEL``.

    Raises:
        InputError: a segment's category is not in ``mapping`` (``where`` names the file).
    """
    values: dict[int, int] = {}
    for segment in segments:
        category = int(segment["category_id"])
        if category not in mapping:
            raise InputError(f"{where}: segment {segment['id']} has category_id {category}, "
                             "which is not in the categories")
        values[int(segment["id"])] = mapping[category]
    # One lookup per distinct id, then one gather: no loop over pixels.
    distinct, inverse = np.unique(np.asarray(ids), return_inverse=True)
    lookup = np.array([values.get(int(i), IGNORE_LABEL) for i in distinct.tolist()],
                      dtype=np.uint8)
    return lookup[inverse].reshape(np.shape(ids))


def _load(json_file: Path) -> dict[str, Any]:
    """The panoptic json, with the three lists every other step relies on."""
    try:
        document = json.loads(json_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{json_file}: cannot read the panoptic json ({error})") from error
    missing = [key for key in ("images", "annotations", "categories")
               if not isinstance(document, dict) or not isinstance(document.get(key), list)]
    if missing:
        raise InputError(f"{json_file}: not a COCO panoptic json, no list {missing}")
    return document


@dataclass(frozen=True)
class DeriveResult:
    """How many stuff maps were written and how many already existed."""

    written: int
    skipped: int


def write_semantic_maps(json_file: Path, png_dir: Path, out_dir: Path) -> DeriveResult:
    """Write each image's separated stuff map as ``out_dir/<PNG file_name>`` (uint8 PNG).

    A map already there is kept as it is, so an interrupted run resumes where it stopped; each
    new one appears atomically. A bad image stops the run with the maps so far intact.
    """
    document = _load(json_file)
    mapping = semantic_ids(document["categories"])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    for annotation in document["annotations"]:
        target = out_dir / annotation["file_name"]
        if target.exists():
            skipped += 1
            continue
        png = png_dir / annotation["file_name"]
        stuff = semantic_map(read_panoptic_png(png), annotation["segments_info"], mapping,
                             where=str(png))
        _save_png_atomic(stuff, target)
        written += 1
    return DeriveResult(written=written, skipped=skipped)


@dataclass(frozen=True)
class PanopticProblem:
    """One inconsistency: the file it is in, the segment (None for the whole file) and what."""

    file: str
    segment_id: int | None
    message: str

    def __str__(self) -> str:
        segment = "" if self.segment_id is None else f" segment {self.segment_id}:"
        return f"{self.file}:{segment} {self.message}"


def _segment_problems(name: str, ids: IdMap, segments: Segments,
                      categories: set[int]) -> list[PanopticProblem]:
    """Ids in the PNG and in its ``segments_info`` must be the same set, and each segment's
    category must exist: otherwise pixels train as the wrong class or as nothing."""
    problems = []
    in_png = set(np.unique(ids).tolist()) - {0}
    listed = [int(s["id"]) for s in segments]
    for ident in sorted(in_png - set(listed)):
        problems.append(PanopticProblem(name, ident, "in the PNG but not in segments_info"))
    for ident in sorted(set(listed) - in_png):
        problems.append(PanopticProblem(name, ident, "in segments_info but not in the PNG"))
    for ident in sorted(i for i, n in Counter(listed).items() if n > 1):
        problems.append(PanopticProblem(name, ident, "listed more than once in segments_info"))
    for segment in segments:
        if int(segment["category_id"]) not in categories:
            problems.append(PanopticProblem(name, int(segment["id"]), f"category_id "
                                            f"{segment['category_id']} is not in the categories"))
    return problems


def _image_problems(annotation: Mapping[str, Any], image: Mapping[str, Any] | None,
                    png_dir: Path, categories: set[int]) -> list[PanopticProblem]:
    """Everything wrong with one annotation's PNG: missing, sized unlike its image, or not
    agreeing with its segments."""
    name = str(annotation["file_name"])
    if image is None:
        return [PanopticProblem(name, None, f"image_id {annotation.get('image_id')} is not "
                                            "in images")]
    try:
        ids = read_panoptic_png(png_dir / name)
    except InputError as error:
        return [PanopticProblem(name, None, f"unreadable or missing ({error})")]
    problems = []
    height, width = ids.shape
    if (width, height) != (image.get("width"), image.get("height")):
        problems.append(PanopticProblem(name, None, f"PNG is {width}x{height} but image "
                                        f"{image['id']} is {image.get('width')}x"
                                        f"{image.get('height')} in the json"))
    return problems + _segment_problems(name, ids, annotation["segments_info"], categories)


def check_panoptic(json_file: Path, png_dir: Path) -> list[PanopticProblem]:
    """Every inconsistency between a panoptic json and its PNG folder (empty when none).

    Reads each PNG once; the problems name the PNG and, where there is one, the segment id.
    """
    document = _load(json_file)
    categories = {int(c["id"]) for c in document["categories"]}
    images = {image["id"]: image for image in document["images"]}
    problems: list[PanopticProblem] = []
    for annotation in document["annotations"]:
        image = images.get(annotation.get("image_id"))
        problems += _image_problems(annotation, image, png_dir, categories)
    return problems


@dataclass(frozen=True)
class PanopticIndex:
    """What registration needs of a panoptic json, without its ``segments_info``: the
    categories and each image's PNG ``file_name``."""

    categories: list[dict[str, Any]]
    file_names: dict[Any, str]


def panoptic_index(json_file: Path) -> PanopticIndex:
    """Categories and ``image_id -> file_name``, the annotations streamed one at a time
    (``coco_stream``): COCO train's segments would otherwise all be in memory at once.

    Resolving, checking and deriving each need it: it is read once per version of the file
    (its size and modification time) in a process.
    """
    try:
        stat = Path(json_file).stat()
    except OSError as error:
        raise InputError(f"{json_file}: cannot read the panoptic json ({error})") from error
    return _cached_index(str(json_file), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _cached_index(json_file: str, size: int, mtime_ns: int) -> PanopticIndex:
    """``panoptic_index`` of one version of the file (size and mtime are the cache key)."""
    return _read_index(Path(json_file))


def _read_index(json_file: Path) -> PanopticIndex:
    from orchestrator.data.coco_stream import stream_coco

    names: dict[Any, str] = {}
    try:
        top = stream_coco(json_file, each=lambda a: names.__setitem__(a["image_id"],
                                                                       a["file_name"])).top
    except (OSError, ValueError, KeyError, TypeError):  # irregular: read it whole
        top = _load(json_file)
        names = {a["image_id"]: a["file_name"] for a in top["annotations"]}
    if not isinstance(top.get("categories"), list):
        _load(json_file)  # raises its InputError
    try:  # isthing must be 0/1 before anyone relies on it
        semantic_ids(top["categories"])
    except InputError as error:
        raise InputError(f"{json_file}: {error}") from None
    return PanopticIndex(categories=list(top["categories"]), file_names=names)


def panoptic_categories(json_file: Path) -> list[dict[str, Any]]:
    """The categories of a panoptic json, in file order (``semantic_ids`` order)."""
    return panoptic_index(json_file).categories
