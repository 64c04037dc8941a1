"""How fast is the dataset pre-flight? ``check_dataset`` on a generated N-image COCO set.

Writes N small PNGs (32x32, a few distinct noise patterns written round-robin, so generating is
just file writes) and a COCO json with one polygon annotation per image into a temp dir, then
times ``check_dataset`` with 1 header-reading thread and with the default thread count, and
prints images/second for both and their ratio. The files were just written, so this measures a
warm page cache: header parsing and the json checks, not disk or network latency (where the
threads help most).

    .venv/bin/python bench/data_check.py [--images 20000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.data.check import check_dataset, default_workers  # noqa: E402

SIZE = 32
VARIANTS = 16


def _png_variants(seed: int = 0) -> list[bytes]:
    """A few distinct small PNGs, encoded once."""
    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(VARIANTS):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(buf, "PNG")
        encoded.append(buf.getvalue())
    return encoded


def _annotation(index: int) -> dict[str, Any]:
    x, y, side = 4.0, 4.0, 16.0
    return {"id": index, "image_id": index, "category_id": 1 + index % 3, "iscrowd": 0,
            "bbox": [x, y, side, side], "area": side * side,
            "segmentation": [[x, y, x + side, y, x + side, y + side, x, y + side]]}


def generate(root: Path, num_images: int) -> tuple[Path, Path]:
    """Write the images and the json; return (json file, image folder)."""
    images = root / "images"
    images.mkdir()
    variants = _png_variants()
    records = []
    for index in range(1, num_images + 1):
        name = f"{index:07d}.png"
        (images / name).write_bytes(variants[index % VARIANTS])
        records.append({"id": index, "file_name": name, "width": SIZE, "height": SIZE})
    coco = {"images": records, "annotations": [_annotation(i) for i in range(1, num_images + 1)],
            "categories": [{"id": i, "name": f"class{i}"} for i in (1, 2, 3)]}
    json_file = root / "instances.json"
    json_file.write_text(json.dumps(coco), encoding="utf-8")
    return json_file, images


def timed(json_file: Path, images: Path, workers: int, repeat: int) -> float:
    """Best wall time of ``repeat`` runs; the set must come out clean."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        report = check_dataset(json_file, images, workers=workers)
        best = min(best, time.perf_counter() - started)
        assert not report.defects, report.format()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="images to generate")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting (best is kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="data-check-bench-") as tmp:
        started = time.perf_counter()
        json_file, images = generate(Path(tmp), args.images)
        print(f"generated {args.images} images in {time.perf_counter() - started:.1f}s")
        many = default_workers()
        multi = timed(json_file, images, many, args.repeat)
        single = timed(json_file, images, 1, args.repeat)
    for label, seconds in ((f"{many} workers (default)", multi), ("1 worker", single)):
        print(f"{label:>22}: {seconds:6.2f}s  {args.images / seconds:8.0f} images/s")
    print(f"speed-up {many} workers vs 1: {single / multi:.2f}x")


if __name__ == "__main__":
    main()
