"""Deterministic synthetic COCO instance-segmentation dataset of coloured shapes.

Why it exists: smoke tests, demos and benchmarks need a real instance-segmentation dataset
that can be produced offline, in seconds, byte-identically for a given seed, so that training
runs are reproducible and the generated files can be cached and shared between processes.

Pure numpy + Pillow on purpose: generating data must never pull in torch, detectron2 or Ray.

With ``stuff_classes`` S > 0 the shapes lie on S kinds of background region (Voronoi cells,
each stuff class with its own muted colour and texture) and every split is also written as
COCO panoptic data, in detectron2's COCO layout: ``annotations/panoptic_<split>.json``, the
segment PNGs in ``panoptic_<split>/`` and the separated stuff maps in
``panoptic_stuff_<split>/``. S = 0 writes exactly what it always wrote.

The manifest, written last, records every file's size and checksum; a dataset whose files do
not match it (cut, garbled, half-copied) is generated again with a warning. ``ensure`` (the
cache that ``submit`` uses) holds a file lock while it checks and generates, so two processes
starting at once generate once.
"""

from __future__ import annotations

import colorsys
import errno
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from orchestrator.data.panoptic import write_panoptic_png, write_semantic_maps
from orchestrator.integrity import file_record, locked, record_problem

__all__ = ["CLASSES", "STUFF_CLASSES", "SyntheticDataset", "SyntheticSplit", "dataset_name",
           "split_files", "ensure", "generate"]

logger = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")

# Bump whenever the generated content changes, so stale caches are not silently reused.
_FORMAT_VERSION = 1
# Base hue per class (red, green, blue, yellow): colour is a cue, jittered so not the only one.
_BASE_HUES: tuple[float, ...] = (0.0, 0.33, 0.61, 0.14)
_HUE_JITTER = 0.03
# (vertex count, radius pattern) of each class, in CLASSES order; a star alternates outer/inner.
_SHAPE_SPECS: tuple[tuple[int, tuple[float, ...]], ...] = (
    (24, (1.0,)),
    (4, (1.0,)),
    (3, (1.0,)),
    (10, (1.0, 0.4)),
)
_MIN_EXTENT, _MAX_EXTENT = 0.15, 0.45  # shape diameter as a fraction of the image side
_MIN_VISIBLE = 0.6  # fraction of its own area every instance keeps after occlusion
_MAX_PLACEMENT_ATTEMPTS = 30
_NOISE_SIGMA = 8.0

STUFF_CLASSES: tuple[str, ...] = ("sky", "grass", "water", "sand", "wall", "road", "snow",
                                  "wood")
# Stuff category ids start here, apart from the things' 1..4 (COCO's stuff ids follow its
# things too): the mapping to contiguous 1..S is then exercised, not an identity.
_STUFF_ID_BASE = 101
# Per stuff class: a near-grey base colour and a texture. The things' classes are told apart
# by saturated hues, so the stuff keeps to the low saturation of the instance-only set's grey
# background (a blue sky or green grass would hide blue and green shapes): the classes differ in
# pattern, brightness and a slight tint.
_STUFF_LOOKS: tuple[tuple[tuple[int, int, int], str], ...] = (
    ((171, 179, 191), "plain"),
    ((96, 105, 89), "vstripes"),
    ((86, 95, 110), "waves"),
    ((180, 174, 161), "dots"),
    ((124, 115, 112), "bricks"),
    ((81, 81, 83), "hstripes"),
    ((236, 236, 238), "plain"),
    ((97, 86, 77), "diagonal"),
)
_TEXTURE_AMPLITUDE = 6.0
_MIN_CELLS, _MAX_CELLS = 2, 4  # Voronoi cells (stuff regions) per image

Mask = npt.NDArray[np.bool_]
Polygon = npt.NDArray[np.float64]
Pixels = npt.NDArray[np.uint8]


@dataclass(frozen=True, kw_only=True)
class SyntheticSplit:
    """One split on disk, exactly what ``register_coco_instances`` needs."""

    name: str
    json_file: Path
    image_root: Path
    num_images: int
    panoptic_json: Path | None = None  # these three only for panoptic data (stuff_classes > 0)
    panoptic_root: Path | None = None
    sem_seg_root: Path | None = None


@dataclass(frozen=True, kw_only=True)
class SyntheticDataset:
    """A generated dataset: its root directory and its two splits."""

    root: Path
    train: SyntheticSplit
    val: SyntheticSplit


@dataclass(frozen=True)
class _Shape:
    """One drawn instance; ``mask`` is the full shape, before later shapes occlude it."""

    category_id: int
    polygon: Polygon
    mask: Mask
    colour: tuple[int, int, int]


def generate(
    out_dir: Path,
    *,
    num_images: int,
    size: int,
    seed: int,
    val_fraction: float = 0.2,
    max_instances: int = 4,
    stuff_classes: int = 0,
    overwrite: bool = False,
) -> SyntheticDataset:
    """Write the dataset to ``out_dir`` atomically, or reuse it if already there.

    Everything is built in a temporary sibling directory and renamed into place at the end,
    so a crash never leaves a half-written dataset behind. An existing ``out_dir`` generated
    with identical parameters is returned as is (the cache path); anything else there raises
    ``FileExistsError`` unless ``overwrite`` is true.
    """
    out_dir = Path(out_dir)
    params = _parameters(
        num_images=num_images,
        size=size,
        seed=seed,
        val_fraction=val_fraction,
        max_instances=max_instances,
        stuff_classes=stuff_classes,
    )
    existing = _existing(out_dir, params, overwrite=overwrite)
    if existing is not None:
        return existing
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        staging.chmod(0o755)  # mkdtemp makes it 0700; a shared cache must stay readable
        _write_dataset(staging, params)
        # Still there: asked to overwrite it, or ours and damaged (_existing said which).
        return _publish(staging, out_dir, params, overwrite=os.path.lexists(out_dir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def dataset_name(*, num_images: int, size: int, seed: int, stuff_classes: int = 0) -> str:
    """The cache folder name of a parameter set (without stuff classes: the name it always
    had, so existing caches stay valid)."""
    stuff = f"-stuff{stuff_classes}" if stuff_classes else ""
    return f"shapes-n{num_images}-s{size}-seed{seed}{stuff}"


def ensure(cache_root: Path, *, num_images: int, size: int, seed: int,
           stuff_classes: int = 0) -> SyntheticDataset:
    """Return the cached dataset for these parameters, generating it on first use.

    Safe under concurrency: a file lock makes racing processes take turns, so one generates
    and the others find its copy. Anything else in the cache folder (a damaged or
    half-generated dataset, staging folders of a killed generator) is replaced.
    """
    cache_root = Path(cache_root)
    name = dataset_name(num_images=num_images, size=size, seed=seed, stuff_classes=stuff_classes)
    with locked(cache_root / f".{name}.lock"):
        for stale in cache_root.glob(f".{name}.tmp-*"):  # the lock says: nobody writes these
            shutil.rmtree(stale, ignore_errors=True)
        return generate(cache_root / name, num_images=num_images, size=size, seed=seed,
                        stuff_classes=stuff_classes, overwrite=True)


# --------------------------------------------------------------------------- parameters & cache


def _parameters(
    *, num_images: int, size: int, seed: int, val_fraction: float, max_instances: int,
    stuff_classes: int = 0,
) -> dict[str, Any]:
    """Validate the arguments up front and return them as the manifest's cache key."""
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2, got {num_images}")
    if max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {max_instances}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0 <= stuff_classes <= len(STUFF_CLASSES):
        raise ValueError(f"stuff_classes must be in [0, {len(STUFF_CLASSES)}], got "
                         f"{stuff_classes}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    num_val = max(1, round(num_images * val_fraction))
    if num_images - num_val < 1:
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training images out of num_images={num_images}"
        )
    params = {
        "format_version": _FORMAT_VERSION,
        "num_images": num_images,
        "size": size,
        "seed": seed,
        "val_fraction": val_fraction,
        "max_instances": max_instances,
        "num_train": num_images - num_val,
        "num_val": num_val,
    }
    if stuff_classes:  # absent at 0: instance-only manifests stay byte-identical
        params["stuff_classes"] = stuff_classes
    return params


def _existing(out_dir: Path, params: dict[str, Any], *, overwrite: bool) -> SyntheticDataset | None:
    """Reuse a matching, intact dataset; None where one must be generated (nothing there, ours
    but damaged, or another one that ``overwrite`` allows replacing); else refuse to clobber."""
    if not os.path.lexists(out_dir):
        return None
    manifest = _read_manifest(out_dir)
    if manifest is not None and manifest.get("parameters") == params:
        damage = record_problem(out_dir, manifest.get("files"))
        if damage is None:
            return _dataset(out_dir, params)
        logger.warning("%s is damaged (%s): generating it again", out_dir, damage)
        return None
    if overwrite:
        if manifest is None:
            logger.warning("%s has no readable manifest.json (a half-generated dataset?): "
                           "generating it again", out_dir)
        return None
    raise FileExistsError(
        f"{out_dir} exists but was not generated with these parameters {params}; "
        "pass overwrite=True to replace it"
    )


def _read_manifest(root: Path) -> dict[str, Any] | None:
    """Return the manifest, or None when absent or unreadable (i.e. not our dataset)."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def split_files(root: Path, name: str, *, num_images: int, panoptic: bool) -> SyntheticSplit:
    """Where one split's files are: the one place that knows the on-disk layout."""
    return SyntheticSplit(
        name=name,
        json_file=root / "annotations" / f"instances_{name}.json",
        image_root=root / name,
        num_images=num_images,
        panoptic_json=root / "annotations" / f"panoptic_{name}.json" if panoptic else None,
        panoptic_root=root / f"panoptic_{name}" if panoptic else None,
        sem_seg_root=root / f"panoptic_stuff_{name}" if panoptic else None,
    )


def _dataset(root: Path, params: dict[str, Any]) -> SyntheticDataset:
    """Describe the on-disk layout of a dataset generated with ``params``."""
    panoptic = bool(params.get("stuff_classes"))
    train, val = (split_files(root, name, num_images=int(params[f"num_{name}"]),
                              panoptic=panoptic) for name in ("train", "val"))
    return SyntheticDataset(root=root, train=train, val=val)


def _publish(
    staging: Path, out_dir: Path, params: dict[str, Any], *, overwrite: bool
) -> SyntheticDataset:
    """Move the finished staging directory into place in one rename."""
    if overwrite and os.path.lexists(out_dir):
        _swap_in(staging, out_dir)
        return _dataset(out_dir, params)
    try:
        os.rename(staging, out_dir)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        # Lost a race with a concurrent generator: use its copy if it matches ours.
        winner = _existing(out_dir, params, overwrite=False)
        if winner is None:
            raise
        return winner
    return _dataset(out_dir, params)


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace an existing ``out_dir``, restoring the old one if the final rename fails.

    POSIX cannot rename over a non-empty directory, so the old one is first moved aside;
    ``out_dir`` is briefly absent, but never half-written.
    """
    trash = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    os.rename(out_dir, trash / "old")
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(trash / "old", out_dir)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- writing


def _write_dataset(root: Path, params: dict[str, Any]) -> None:
    """Write both splits and, last, the manifest that marks the dataset as complete."""
    rngs = np.random.default_rng(params["seed"]).spawn(params["num_images"])
    split_rngs = {"train": rngs[: params["num_train"]], "val": rngs[params["num_train"] :]}
    (root / "annotations").mkdir()
    for name, image_rngs in split_rngs.items():
        if params.get("stuff_classes"):
            coco = _write_panoptic_split(root, name, image_rngs, params)
        else:
            coco = _write_split(root / name, name, image_rngs, params)
        _write_json(root / "annotations" / f"instances_{name}.json", coco)
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    manifest: dict[str, Any] = {"classes": list(CLASSES), "parameters": params,
                                "files": file_record(root, written, times=False)}
    if params.get("stuff_classes"):
        manifest["stuff_classes"] = list(STUFF_CLASSES[: params["stuff_classes"]])
    _write_json(root / "manifest.json", manifest)


def _write_split(
    image_dir: Path, name: str, rngs: list[np.random.Generator], params: dict[str, Any]
) -> dict[str, Any]:
    """Render and save one split's images; return its COCO document."""
    image_dir.mkdir()
    size = params["size"]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, rng in enumerate(rngs, start=1):
        file_name = f"{image_id:06d}.png"
        pixels, shapes = _render_image(rng, size, params["max_instances"])
        _save_png(pixels, image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for shape, area in shapes:
            ann_id = len(annotations) + 1
            annotations.append(_annotation(ann_id, image_id, shape, area, size))
    return _coco_document(name, images, annotations, params)


def _annotation(ann_id: int, image_id: int, shape: _Shape, area: int, size: int) -> dict[str, Any]:
    """COCO record: full-shape polygon, but the *visible* area, so occlusion is reflected."""
    x0, y0 = np.clip(shape.polygon.min(axis=0), 0, size)
    x1, y1 = np.clip(shape.polygon.max(axis=0), 0, size)
    bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": shape.category_id,
        "segmentation": [[float(v) for v in shape.polygon.ravel()]],
        "area": area,
        "bbox": [round(v, 2) for v in bbox],
        "iscrowd": 0,
    }


def _coco_document(
    split: str,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    params: dict[str, Any],
) -> dict[str, Any]:
    """Assemble the COCO ``instances`` file; no dates, so output is byte-reproducible."""
    categories = [
        {"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES, 1)
    ]
    info = {
        "description": f"Synthetic coloured shapes, {split} split",
        "version": str(_FORMAT_VERSION),
        "parameters": params,
    }
    return {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _write_json(path: Path, document: dict[str, Any]) -> None:
    """Sorted keys and fixed separators keep the bytes identical across runs."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    path.write_text(text + "\n", encoding="utf-8")


def _save_png(pixels: Pixels, path: Path) -> None:
    """Pillow writes no tIME chunk by default, so equal pixels give equal bytes."""
    Image.fromarray(pixels).save(path, format="PNG")


# --------------------------------------------------------------------------- panoptic writing


def _write_panoptic_split(
    root: Path, name: str, rngs: list[np.random.Generator], params: dict[str, Any]
) -> dict[str, Any]:
    """Render one split with stuff regions; write its images, segment PNGs, panoptic json and
    stuff maps (``write_semantic_maps``, the rule pre-flight uses); return its COCO document."""
    files = split_files(root, name, num_images=len(rngs), panoptic=True)
    assert files.panoptic_json and files.panoptic_root and files.sem_seg_root
    files.image_root.mkdir()
    files.panoptic_root.mkdir()
    size, stuff = params["size"], params["stuff_classes"]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    for image_id, rng in enumerate(rngs, start=1):
        file_name = f"{image_id:06d}.png"
        pixels, shapes, ids, info = _render_panoptic(rng, size, params["max_instances"], stuff)
        _save_png(pixels, files.image_root / file_name)
        write_panoptic_png(files.panoptic_root / file_name, ids)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for shape, area in shapes:
            annotations.append(_annotation(len(annotations) + 1, image_id, shape, area, size))
        segments.append({"image_id": image_id, "file_name": file_name, "segments_info": info})
    coco = _coco_document(name, images, annotations, params)
    panoptic = {**coco, "annotations": segments, "categories": _panoptic_categories(stuff)}
    _write_json(files.panoptic_json, panoptic)
    write_semantic_maps(files.panoptic_json, files.panoptic_root, files.sem_seg_root)
    return coco


def _panoptic_categories(stuff: int) -> list[dict[str, Any]]:
    """Things 1..4 as in the instances json, then ``stuff`` stuff categories from 101."""
    things = [{"id": i, "name": n, "supercategory": "shape", "isthing": 1}
              for i, n in enumerate(CLASSES, 1)]
    return things + [{"id": _STUFF_ID_BASE + j, "name": STUFF_CLASSES[j],
                      "supercategory": "background", "isthing": 0} for j in range(stuff)]


def _segment_info(ident: int, category_id: int, mask: Mask) -> dict[str, Any]:
    """COCO panoptic ``segments_info`` entry: area and box of the visible pixels."""
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1)]
    return {"id": ident, "category_id": category_id, "area": int(mask.sum()), "bbox": bbox,
            "iscrowd": 0}


def _panoptic_segments(
    visible: list[Mask], shapes: list[_Shape], regions: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.uint32], list[dict[str, Any]]]:
    """Segment-id map and ``segments_info``: each shape is segment 1..n, then one segment per
    stuff class with visible pixels left (a class fully hidden by shapes has none)."""
    ids = np.zeros(regions.shape, dtype=np.uint32)
    info: list[dict[str, Any]] = []
    things = np.zeros(regions.shape, dtype=bool)
    for ident, (mask, shape) in enumerate(zip(visible, shapes, strict=True), start=1):
        ids[mask] = ident
        things |= mask
        info.append(_segment_info(ident, shape.category_id, mask))
    for stuff in np.unique(regions).tolist():
        mask = (regions == stuff) & ~things
        if mask.any():
            ident = len(info) + 1
            ids[mask] = ident
            info.append(_segment_info(ident, _STUFF_ID_BASE + stuff, mask))
    return ids, info


# --------------------------------------------------------------------------- rendering


def _render_image(
    rng: np.random.Generator, size: int, max_instances: int
) -> tuple[Pixels, list[tuple[_Shape, int]]]:
    """Place 1..max_instances shapes, paint them in order and return (pixels, shapes+areas)."""
    shapes = _place_shapes(rng, size, max_instances)
    pixels, visible = _paint(rng, _background(rng, size), shapes)
    return pixels, [(shape, int(mask.sum())) for shape, mask in zip(shapes, visible, strict=True)]


def _place_shapes(rng: np.random.Generator, size: int, max_instances: int) -> list[_Shape]:
    """1..max_instances shapes that do not hide each other too much (some may not fit)."""
    count = int(rng.integers(1, max_instances + 1))
    shapes: list[_Shape] = []
    for _ in range(count):
        shape = _place_shape(rng, size, shapes)
        if shape is not None:
            shapes.append(shape)
    return shapes


def _paint(rng: np.random.Generator, canvas: npt.NDArray[np.float64],
           shapes: list[_Shape]) -> tuple[Pixels, list[Mask]]:
    """Shapes painted in order on ``canvas``, plus noise; and each shape's visible mask."""
    for shape in shapes:
        canvas[shape.mask] = shape.colour
    canvas += rng.normal(0.0, _NOISE_SIGMA, size=canvas.shape)
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return pixels, _visible_masks([shape.mask for shape in shapes])


def _place_shape(rng: np.random.Generator, size: int, placed: list[_Shape]) -> _Shape | None:
    """Draw random shapes until one keeps every instance >= 60% visible (or give up)."""
    for _ in range(_MAX_PLACEMENT_ATTEMPTS):
        candidate = _random_shape(rng, size)
        masks = [shape.mask for shape in placed] + [candidate.mask]
        full = [int(mask.sum()) for mask in masks]
        seen = [int(mask.sum()) for mask in _visible_masks(masks)]
        if full[-1] > 0 and all(v >= _MIN_VISIBLE * f for v, f in zip(seen, full, strict=True)):
            return candidate
    return None


def _random_shape(rng: np.random.Generator, size: int) -> _Shape:
    """A random class, extent, rotation and colour, centred so the shape fits in the image."""
    index = int(rng.integers(len(CLASSES)))
    radius = size * rng.uniform(_MIN_EXTENT, _MAX_EXTENT) / 2.0
    centre = rng.uniform(radius + 1.0, size - 1.0 - radius, size=2)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    polygon = _shape_polygon(index, centre, radius, angle, size)
    return _Shape(
        category_id=index + 1,
        polygon=polygon,
        mask=_rasterise(polygon, size),
        colour=_colour(rng, index),
    )


def _shape_polygon(
    index: int, centre: npt.NDArray[np.float64], radius: float, angle: float, size: int
) -> Polygon:
    """Regular polygon (or star) vertices, rounded to 2 decimals exactly as written to json."""
    count, radii = _SHAPE_SPECS[index]
    steps = np.arange(count)
    theta = angle + 2.0 * math.pi * steps / count
    r = radius * np.asarray(radii)[steps % len(radii)]
    points = np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=1)
    return np.round(np.clip(points, 0.0, float(size)), 2)


def _rasterise(polygon: Polygon, size: int) -> Mask:
    """Even-odd test at pixel centres (COCO convention: pixel i spans [i, i+1)).

    Sampling centres rather than Pillow's outline-inclusive fill keeps the area unbiased, so
    ``area`` agrees with what pycocotools rasterises from the same polygon.
    """
    (x0, y0), (x1, y1) = np.floor(polygon.min(axis=0)), np.ceil(polygon.max(axis=0))
    xs = np.arange(int(x0), int(x1)) + 0.5
    ys = np.arange(int(y0), int(y1)) + 0.5
    inside = np.zeros((ys.size, xs.size), dtype=bool)
    for (ax, ay), (bx, by) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        if ay == by:
            continue  # a horizontal edge never crosses a row of centres
        crosses = (ay > ys) != (by > ys)
        x_at_row = ax + (ys - ay) * (bx - ax) / (by - ay)
        inside ^= crosses[:, None] & (xs[None, :] < x_at_row[:, None])
    mask = np.zeros((size, size), dtype=bool)
    mask[int(y0) : int(y1), int(x0) : int(x1)] = inside
    return mask


def _visible_masks(masks: list[Mask]) -> list[Mask]:
    """What remains of each mask once every later (on top) mask is painted over it."""
    visible: list[Mask] = []
    covered = np.zeros_like(masks[0]) if masks else np.zeros((0, 0), dtype=bool)
    for mask in reversed(masks):
        visible.append(mask & ~covered)
        covered = covered | mask
    return visible[::-1]


def _colour(rng: np.random.Generator, index: int) -> tuple[int, int, int]:
    """Class hue plus jitter in hue, saturation and brightness."""
    hue = (_BASE_HUES[index] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 1.0
    saturation = rng.uniform(0.45, 1.0)
    value = rng.uniform(0.55, 1.0)
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return (round(red * 255), round(green * 255), round(blue * 255))


def _background(rng: np.random.Generator, size: int) -> npt.NDArray[np.float64]:
    """Grey-ish canvas with a slight random tint; per-pixel noise is added after painting."""
    grey = rng.uniform(90.0, 170.0)
    tint = rng.uniform(-12.0, 12.0, size=3)
    return np.broadcast_to(grey + tint, (size, size, 3)).astype(np.float64)


def _render_panoptic(
    rng: np.random.Generator, size: int, max_instances: int, stuff: int
) -> tuple[Pixels, list[tuple[_Shape, int]], npt.NDArray[np.uint32], list[dict[str, Any]]]:
    """``_render_image`` on a background of stuff regions; also the segment ids and infos."""
    shapes = _place_shapes(rng, size, max_instances)
    regions = _stuff_regions(rng, size, stuff)
    pixels, visible = _paint(rng, _stuff_background(rng, regions), shapes)
    ids, info = _panoptic_segments(visible, shapes, regions)
    areas = [int(mask.sum()) for mask in visible]
    return pixels, list(zip(shapes, areas, strict=True)), ids, info


def _stuff_regions(rng: np.random.Generator, size: int, stuff: int) -> npt.NDArray[np.int64]:
    """Stuff class (0..stuff-1) per pixel: 2-4 Voronoi cells, each of a random class."""
    cells = int(rng.integers(_MIN_CELLS, _MAX_CELLS + 1))
    seeds = rng.uniform(0.0, size, size=(cells, 2))
    classes = rng.integers(stuff, size=cells)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    distance = (xs[None] - seeds[:, 0, None, None]) ** 2 + (ys[None] - seeds[:, 1, None, None]) ** 2
    return classes[np.argmin(distance, axis=0)].astype(np.int64)


def _stuff_background(rng: np.random.Generator,
                      regions: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Each region in its class's colour (brightness jittered per image) and texture."""
    size = regions.shape[0]
    canvas = np.zeros((size, size, 3), dtype=np.float64)
    for stuff in np.unique(regions).tolist():
        colour, texture = _STUFF_LOOKS[stuff]
        shade = rng.uniform(0.85, 1.15)
        pattern = _texture(texture, size, phase=int(rng.integers(8)))
        mask = regions == stuff
        canvas[mask] = (np.asarray(colour, dtype=np.float64) * shade
                        + _TEXTURE_AMPLITUDE * pattern[mask][:, None])
    return canvas


def _texture(kind: str, size: int, *, phase: int) -> npt.NDArray[np.float64]:
    """A pattern in [-1, 1] over the image; ``phase`` shifts it so it is not pixel-fixed."""
    ys, xs = np.mgrid[0:size, 0:size] + phase
    patterns = {
        "plain": np.zeros((size, size)),
        "vstripes": np.where(xs // 4 % 2, 1.0, -1.0),
        "hstripes": np.where(ys // 4 % 2, 1.0, -1.0),
        "diagonal": np.where((xs + ys) // 4 % 2, 1.0, -1.0),
        "waves": np.sin(ys / 2.0 + 2.0 * np.sin(xs / 6.0)),
        "dots": np.where((xs % 6 < 2) & (ys % 6 < 2), 1.0, -0.3),
        "bricks": np.where((ys % 8 == 0) | ((xs + 8 * (ys // 8 % 2)) % 16 == 0), -1.0, 0.3),
    }
    return patterns[kind].astype(np.float64)
