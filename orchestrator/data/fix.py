"""Write a corrected copy of a COCO instances file: what ``orchestrator data check --fix`` does.

Every change is recorded (kind, ids, before -> after) so nothing is altered silently. The
input is never modified: the copy goes to a temporary file next to the output and is moved
into place with ``os.replace``, so a crash never leaves a half-written json behind.

Same rules as ``orchestrator.data.check``; a fixed copy passes the check (barring warnings).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.data.check import (
    Progress,
    Size,
    bbox_problem,
    file_problem,
    is_id,
    load_coco,
    polygon_problem,
    rle_problem,
    scan_image_sizes,
)
from orchestrator.errors import InputError

__all__ = ["Change", "FixSummary", "fix_dataset", "write_json_atomic"]

IdMap = dict[Hashable, Any]


@dataclass(frozen=True)
class Change:
    """One edit: what kind, on which ids (as in the input json), and before -> after."""

    kind: str
    image_id: Any = None
    annotation_id: Any = None
    category_id: Any = None
    before: str = ""
    after: str = ""

    def describe(self) -> str:
        ids = [f"{name} {value!r}" for name, value in (
            ("image", self.image_id), ("annotation", self.annotation_id),
            ("category", self.category_id)) if value is not None]
        return f"{self.kind} {', '.join(ids)}: {self.before} -> {self.after}"


@dataclass(frozen=True, kw_only=True)
class FixSummary:
    """Every change made to write ``out_file`` from ``json_file``."""

    json_file: Path
    out_file: Path
    changes: tuple[Change, ...]
    num_images: int
    num_annotations: int

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(c.kind for c in self.changes))

    def format(self, limit: int | None = 10) -> str:
        """Counts per kind, then the changes (the first ``limit`` of each kind; None = all)."""
        lines = [f"wrote {self.out_file} from {self.json_file}: {len(self.changes)} change(s), "
                 f"{self.num_images} images, {self.num_annotations} annotations"]
        shown: Counter[str] = Counter()
        for kind, count in self.counts.items():
            lines.append(f"  {kind} x{count}")
            for change in (c for c in self.changes if c.kind == kind):
                if limit is not None and shown[kind] >= limit:
                    lines.append(f"    ... and {count - limit} more")
                    break
                shown[kind] += 1
                lines.append(f"    {change.describe()}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- categories


def _category_order(item: tuple[int, dict[str, Any]]) -> tuple[int, float, int]:
    """Numeric ids in numeric order (so 0-based ids keep their class order), others last."""
    index, cat = item
    cid = cat["id"]
    numeric = isinstance(cid, int | float) and not isinstance(cid, bool)
    return (0, float(cid), index) if numeric else (1, 0.0, index)


def _is_valid_category_id(cid: Any) -> bool:
    return isinstance(cid, int) and not isinstance(cid, bool) and cid > 0


def _fix_categories(categories: list[Any], changes: list[Change]) -> tuple[list[Any], IdMap]:
    """Drop malformed and duplicate categories, renumber to 1..K if any id is invalid.

    Returns the new categories and a map from old id to new id.
    """
    kept: list[dict[str, Any]] = []
    for cat in categories:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), Hashable) \
                or "name" not in cat:
            changes.append(Change("drop_category", before=repr(cat)[:80], after="dropped"))
        elif any(c["id"] == cat["id"] for c in kept):
            changes.append(Change("drop_category", category_id=cat["id"],
                                  before=f"duplicate '{cat['name']}'", after="dropped"))
        else:
            kept.append(dict(cat))
    if all(_is_valid_category_id(c["id"]) for c in kept):
        return kept, {c["id"]: c["id"] for c in kept}
    ordered = [cat for _, cat in sorted(enumerate(kept), key=_category_order)]
    mapping = {cat["id"]: new for new, cat in enumerate(ordered, start=1)}
    for cat in ordered:
        if cat["id"] != mapping[cat["id"]]:
            changes.append(Change("renumber_category", category_id=cat["id"],
                                  before=repr(cat["id"]), after=str(mapping[cat["id"]])))
        cat["id"] = mapping[cat["id"]]
    return ordered, mapping


# --------------------------------------------------------------------------- images


def _drop_bad_image_records(images: list[Any], changes: list[Change]) -> list[dict[str, Any]]:
    """Keep records with an id and a file_name, the first of each id."""
    kept: dict[Hashable, dict[str, Any]] = {}
    for img in images:
        ident = img.get("id") if isinstance(img, dict) else None
        name = img.get("file_name") if isinstance(img, dict) else None
        if not is_id(ident) or not isinstance(name, str) or not name:
            changes.append(Change("drop_image", before=repr(img)[:80],
                                  after="dropped (needs an id and a file_name)"))
        elif ident in kept:
            changes.append(Change("drop_image", image_id=ident, before=f"duplicate id ({name})",
                                  after=f"dropped; the id stays with {kept[ident]['file_name']}"))
        else:
            kept[ident] = dict(img)
    return list(kept.values())


def _fix_images(
    images: list[Any], image_root: Path, changes: list[Change], *, workers: int | None,
    progress: Progress | None, decode: bool = False,
) -> tuple[list[Any], dict[Hashable, Size]]:
    """Set true sizes from the headers; drop missing/unreadable images. Returns (images, sizes)."""
    records = _drop_bad_image_records(images, changes)
    results = scan_image_sizes([image_root / r["file_name"] for r in records], workers=workers,
                               progress=progress, decode=decode)
    kept: list[dict[str, Any]] = []
    sizes: dict[Hashable, Size] = {}
    for img, result in zip(records, results, strict=True):
        problem = file_problem(result)
        if problem is not None:
            changes.append(Change("drop_image", image_id=img["id"],
                                  before=f"{img['file_name']}: {problem[1]}", after="dropped"))
            continue
        assert isinstance(result, tuple)
        before = (img.get("width"), img.get("height"))
        if before != result:
            changes.append(Change("image_size", image_id=img["id"],
                                  before=f"{before[0]}x{before[1]}",
                                  after=f"{result[0]}x{result[1]}"))
            img["width"], img["height"] = result
        kept.append(img)
        sizes[img["id"]] = result
    return kept, sizes


# --------------------------------------------------------------------------- annotations


def _drop_reason(ann: Any, sizes: dict[Hashable, Size], categories: IdMap) -> str | None:
    if not isinstance(ann, dict):
        return "not an object"
    for key in ("image_id", "category_id"):
        if not is_id(ann.get(key)):
            return f"{key} {ann.get(key)!r} is not an integer id"
    if ann["image_id"] not in sizes:
        return f"image_id {ann['image_id']!r} is not a kept image"
    if ann["category_id"] not in categories:
        return f"category_id {ann['category_id']!r} is not a known category"
    segm = ann.get("segmentation")
    if segm is None:
        return "no segmentation (every model here trains masks)"
    if not isinstance(segm, list | dict):
        return f"segmentation is a {type(segm).__name__}"
    if isinstance(segm, dict):
        return rle_problem(segm, sizes[ann["image_id"]])
    return None


def _fix_polygons(ann: dict[str, Any], changes: list[Change]) -> bool:
    """Drop invalid polygons of a non-crowd annotation; False when none is left."""
    segm = ann.get("segmentation")
    if not isinstance(segm, list) or ann.get("iscrowd", 0):
        return True
    valid = [p for p in segm if polygon_problem(p) is None]
    if len(valid) < len(segm) and valid:
        changes.append(Change("drop_polygon", ann["image_id"], ann.get("id"),
                              before=f"{len(segm)} polygons", after=f"{len(valid)} polygons"))
        ann["segmentation"] = valid
    return bool(valid)


def _fix_box(ann: dict[str, Any], size: Size, changes: list[Change]) -> bool:
    """Clip a box that overhangs the image; False when it is degenerate."""
    if ann.get("iscrowd", 0):
        return True
    problem = bbox_problem(ann.get("bbox"), size)
    if problem is None:
        return True
    if problem[0] == "degenerate_box":
        return False
    x, y, w, h = ann["bbox"]
    x0, y0 = max(x, 0), max(y, 0)
    clipped = [x0, y0, min(x + w, size[0]) - x0, min(y + h, size[1]) - y0]
    changes.append(Change("clip_box", ann["image_id"], ann.get("id"), before=str(ann["bbox"]),
                          after=str(clipped)))
    ann["bbox"] = clipped
    return True


def _fix_annotation(ann: Any, sizes: dict[Hashable, Size], categories: IdMap,
                    changes: list[Change]) -> dict[str, Any] | None:
    """The corrected annotation, or None (recorded as a drop_annotation change)."""
    reason = _drop_reason(ann, sizes, categories)
    if reason is None:
        ann = dict(ann)
        ann["category_id"] = categories[ann["category_id"]]
        if not _fix_polygons(ann, changes):
            reason = "no valid polygon"
        elif not _fix_box(ann, sizes[ann["image_id"]], changes):
            reason = f"degenerate bbox {ann.get('bbox')!r}"
    if reason is None:
        return ann
    record = ann if isinstance(ann, dict) else {}
    changes.append(Change("drop_annotation", record.get("image_id"), record.get("id"),
                          before=reason, after="dropped"))
    return None


def _renumber_annotations(annotations: list[dict[str, Any]], changes: list[Change]) -> None:
    """Give duplicate or missing annotation ids fresh ids after the largest one."""
    ids = [a.get("id") for a in annotations]
    next_id = max((i for i in ids if isinstance(i, int) and not isinstance(i, bool)),
                  default=0) + 1
    seen: set[Hashable] = set()
    for ann in annotations:
        ident = ann.get("id")
        if is_id(ident) and ident not in seen:
            seen.add(ident)
            continue
        changes.append(Change("renumber_annotation", ann.get("image_id"), ident,
                              before=repr(ident), after=str(next_id)))
        ann["id"] = next_id
        next_id += 1


# --------------------------------------------------------------------------- writing


def write_json_atomic(path: Path, document: Any) -> None:
    """Write to a temporary file in the same directory, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a dataset is shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_out_file(json_file: Path, out_file: Path, overwrite: bool) -> None:
    if out_file.is_dir():
        raise InputError(f"{out_file}: is a folder; --fix needs a file path, e.g. "
                         f"{out_file / (json_file.stem + '.fixed.json')}")
    if out_file.resolve() == json_file.resolve():
        raise InputError(f"{out_file}: --fix must write a new file, never the input json "
                         "(give another path, e.g. instances.fixed.json)")
    if out_file.exists() and not overwrite:
        raise InputError(f"{out_file}: already exists; pass --overwrite (overwrite=True) to "
                         "replace it, or give another path")
    if not out_file.parent.is_dir():
        raise InputError(f"{out_file}: folder {out_file.parent} does not exist")


def fix_dataset(json_file: Path, image_root: Path, out_file: Path, *, overwrite: bool = False,
                workers: int | None = None, progress: Progress | None = None,
                decode: bool = False) -> FixSummary:
    """Write a corrected copy of ``json_file`` to ``out_file``; the input is never modified.
    ``decode``: also drop images whose pixels cannot be decoded (truncated files)."""
    json_file, image_root, out_file = Path(json_file), Path(image_root), Path(out_file)
    _check_out_file(json_file, out_file, overwrite)
    coco = load_coco(json_file)
    if not image_root.is_dir():
        raise InputError(f"{image_root}: image folder not found")
    changes: list[Change] = []
    categories, cat_map = _fix_categories(coco["categories"], changes)
    images, sizes = _fix_images(coco["images"], image_root, changes, workers=workers,
                                progress=progress, decode=decode)
    fixed = [_fix_annotation(a, sizes, cat_map, changes) for a in coco["annotations"]]
    annotations = [a for a in fixed if a is not None]
    _renumber_annotations(annotations, changes)
    write_json_atomic(out_file, {**coco, "images": images, "annotations": annotations,
                                 "categories": categories})
    return FixSummary(json_file=json_file, out_file=out_file, changes=tuple(changes),
                      num_images=len(images), num_annotations=len(annotations))
