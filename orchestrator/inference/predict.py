"""Images -> predictions: one PNG per image with them drawn, one COCO-style JSON for all.

The JSON is a COCO instances file (``images``, ``categories``, ``annotations`` with RLE
``segmentation`` and a ``score``), so ``pycocotools.coco.COCO`` reads it as is. Category ids
are the model's class indices. An image that cannot be read is reported and skipped.

A panoptic model's results are also exported in COCO panoptic format: ``panoptic.json`` and
one segment-id PNG per image in ``panoptic/`` (ids and category scheme in
``orchestrator.inference.panoptic``); the drawings show its stuff regions under the instances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.config import CfgNode
from PIL import Image

from orchestrator.data.fix import write_json_atomic
from orchestrator.errors import InputError
from orchestrator.inference.draw import draw_records
from orchestrator.inference.loading import LoadedRun
from orchestrator.inference.panoptic import (
    PANOPTIC_DIR,
    PANOPTIC_FILE,
    PanopticExport,
    num_thing_classes,
    panoptic_of,
)
from orchestrator.inference.predictor import output_records, predict_output, read_rgb

__all__ = ["IMAGE_SUFFIXES", "PredictResult", "find_images", "predict_images",
           "PREDICTIONS_FILE", "check_outputs", "output_paths", "write_prediction"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
PREDICTIONS_FILE = "predictions.json"

Progress = Callable[[Path, str | None], None]
"""Called after each image with its path and the error that skipped it (None: written)."""


@dataclass
class PredictResult:
    """What was written and what was skipped (with why)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    json_path: Path | None = None
    panoptic_json: Path | None = None  # panoptic models only
    num_predictions: int = 0


def find_images(path: Path) -> list[Path]:
    """``path`` itself, or the image files directly in the folder ``path`` (sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such image or folder")
    images = sorted(p for p in path.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
    return images


def _categories(loaded: LoadedRun, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    used = {int(r["category_id"]) for r in records}
    count = max([len(loaded.class_names), *(c + 1 for c in used)])
    return [{"id": i, "name": loaded.class_names[i] if i < len(loaded.class_names)
             else f"class {i}"} for i in range(count)]


def _write_json(loaded: LoadedRun, images: list[dict[str, Any]],
                records: list[dict[str, Any]], path: Path) -> None:
    annotations = [{**r, "id": i + 1, "area": float(_area(r)), "iscrowd": 0}
                   for i, r in enumerate(records)]
    document = {"info": _info(loaded), "images": images,
                "categories": _categories(loaded, records), "annotations": annotations}
    write_json_atomic(path, document)


def _info(loaded: LoadedRun) -> dict[str, str]:
    return {"run_id": loaded.run_id, "run_name": loaded.run_name}


def _area(record: dict[str, Any]) -> float:
    import pycocotools.mask as mask_util

    if "segmentation" in record:
        return float(mask_util.area(record["segmentation"]))
    return float(record["bbox"][2] * record["bbox"][3])


def _png_name(path: Path, taken: set[str]) -> str:
    """``<stem>.png``, made unique when two inputs share a stem (a.jpg and a.png)."""
    name, n = f"{path.stem}.png", 1
    while name in taken:
        name, n = f"{path.stem}_{n}.png", n + 1
    taken.add(name)
    return name


def output_paths(paths: Sequence[Path], out_dir: Path) -> list[Path]:
    """The PNG each input will be drawn into, in order."""
    taken: set[str] = set()
    return [out_dir / _png_name(path, taken) for path in paths]


def check_outputs(paths: Sequence[Path], out_dir: Path) -> None:
    """Refuse (exit 2) an ``--out`` that is an input file or would write over one; cheap, so
    it runs before the model is fetched."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: is a file, not a folder (an input image?); give a "
                         f"folder for the PNGs and {PREDICTIONS_FILE}")
    inputs = {path.resolve(): path for path in paths}
    panoptic = [out_dir / PANOPTIC_DIR / p.name for p in output_paths(paths, out_dir)]
    for target in [*output_paths(paths, out_dir), out_dir / PREDICTIONS_FILE,
                   out_dir / PANOPTIC_FILE, *panoptic]:
        hit = inputs.get(target.resolve())
        if hit is not None:
            raise InputError(f"--out {out_dir}: would write {target.name} over the input "
                             f"{hit}; give another folder (inputs are never overwritten)")


def write_prediction(rgb: np.ndarray, output: dict[str, Any], target: Path, *,
                     image_id: int, cfg: CfgNode, class_names: Sequence[str],
                     stuff_names: Sequence[str] = (),
                     export: PanopticExport | None = None) -> list[dict[str, Any]]:
    """Draw one image's model output into ``target`` and return its COCO records; a
    ``panoptic_seg`` in the output is drawn too and, given ``export``, exported."""
    records = output_records(output, cfg, image_id=image_id)
    panoptic = panoptic_of(output)
    Image.fromarray(draw_records(rgb, records, class_names, panoptic=panoptic,
                                 stuff_names=stuff_names)).save(target)
    if panoptic is not None and export is not None:
        export.add(image_id, target.name, panoptic)
    return records


def _predict_one(loaded: LoadedRun, path: Path, rgb: np.ndarray, target: Path,
                 image_id: int, export: PanopticExport
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Predict and draw one image; returns its COCO image entry and its records."""
    found = write_prediction(rgb, predict_output(loaded.model, loaded.cfg, rgb), target,
                             image_id=image_id, cfg=loaded.cfg,
                             class_names=loaded.class_names, stuff_names=loaded.stuff_names,
                             export=export)
    entry = {"id": image_id, "file_name": str(path), "height": rgb.shape[0],
             "width": rgb.shape[1]}
    return entry, found


def predict_images(loaded: LoadedRun, paths: Sequence[Path], out_dir: Path, *,
                   progress: Progress | None = None) -> PredictResult:
    """Predict every image in ``paths``, writing PNGs and ``predictions.json`` to ``out_dir``."""
    check_outputs(paths, out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out_dir}: cannot create the folder ({exc})") from None
    result = PredictResult()
    export = PanopticExport(out_dir, num_thing_classes(loaded.cfg, loaded.class_names),
                            loaded.class_names, loaded.stuff_names)
    images: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for path, target in zip(paths, output_paths(paths, out_dir), strict=True):
        error = None
        try:
            rgb = read_rgb(path)
        except (OSError, ValueError) as exc:
            error = f"not a readable image: {exc}"
            result.skipped.append((path, error))
        else:
            entry, found = _predict_one(loaded, path, rgb, target, len(images) + 1, export)
            images.append(entry)
            records.extend(found)
            result.written.append(target)
        if progress:
            progress(path, error)
    if images:
        result.json_path = out_dir / PREDICTIONS_FILE
        _write_json(loaded, images, records, result.json_path)
        result.panoptic_json = export.write(images, _info(loaded))
    result.num_predictions = len(records)
    return result
