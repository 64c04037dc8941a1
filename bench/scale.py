"""Data at COCO scale: the driver's pre-flight and each worker's dataset load, today vs cached.

Writes a COCO-2017-sized instances file (118,287 images, ~860k polygon instances; every image
is a hard link to one valid 640x480 PNG of 1 KB, which Pillow opens as the pre-flight's header
reads do; the load path never opens images), then measures, each in fresh processes:

1. the driver's pre-flight (``resolve_data`` + the data check, as ``submit`` runs them):
   (a) cold, with an empty ``.orchestrator/checks``, and (b) cached, the same command again
   with nothing changed: seconds and peak RSS of each, and the ratio cold/cached;
2. two worker processes on this node loading the training set at the same time, as two Ray
   workers do in ``Trainer.build_train_loader``:
   (a) today: each parses the json (detectron2's ``get_detection_dataset_dicts``) and
       serializes it (``DatasetFromList``);
   (b) cached, first submit: one parses in a child process into the node's cache, the other
       waits, both map it;
   (c) cached, second submit: both map the existing cache.
   For each: load seconds and added peak RSS per worker (VmHWM after the load minus RSS before
   it, with the high-water mark reset first). The mapped cache enters a worker's RSS only as
   the loader reads it, as shared page-cache pages (at most the cache's size, once per node).

Prints the per-worker RSS ratio (cached/today) and the cache speed-up (parse/second load).
Then, unless ``--scoring-images 0``, rank 0's COCO scoring on a COCO-val-sized set,
pycocotools against ours (``bench/coco_scoring.py``, which also runs alone).

    .venv/bin/python bench/scale.py [--scale 1.0] [--keep DIR] [--scoring-images 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COCO_IMAGES, COCO_INSTANCES = 118_287, 860_001


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def png_file(width: int, height: int) -> bytes:
    """A black RGB PNG (IHDR, IDAT, IEND): about 1 KB for 640x480. A bare signature + IHDR
    is not enough: Pillow 13 then fails to open the file, and every image would be a
    ``unreadable_image`` error instead of a header read."""
    rows = (b"\x00" + bytes(3 * width)) * height
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows, 9)) + _chunk(b"IEND", b""))


def write_dataset(folder: Path, scale: float, seed: int = 0) -> Path:
    """The json (and the linked image files); returns the json path."""
    num_images = round(COCO_IMAGES * scale)
    num_instances = round(COCO_INSTANCES * scale)
    rng = np.random.default_rng(seed)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for image_id in range(1, num_images + 1):
        name = f"{image_id:012d}.png"
        link = images_dir / name
        template = images_dir / f"template{image_id // 50_000}.png"  # ext4: 65,000 links
        if not template.exists() or template.stat().st_size < 100:  # or an older bare header
            template.write_bytes(png_file(640, 480))
        if not link.exists():
            os.link(template, link)
        images.append({"id": image_id, "file_name": name, "width": 640, "height": 480})
    owners = rng.integers(1, num_images + 1, size=num_instances)
    categories = rng.integers(1, 81, size=num_instances)
    vertices = rng.integers(6, 20, size=num_instances)
    centers = rng.uniform([60, 60], [580, 420], size=(num_instances, 2))
    radii = rng.uniform(5, 55, size=num_instances)
    annotations = []
    for i in range(num_instances):
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=vertices[i]))
        r = radii[i] * rng.uniform(0.6, 1.0, size=vertices[i])
        xs = np.round(centers[i, 0] + r * np.cos(angles), 2)
        ys = np.round(centers[i, 1] + r * np.sin(angles), 2)
        poly = np.stack([xs, ys], axis=1).ravel().tolist()
        x0, y0 = float(xs.min()), float(ys.min())
        w, h = float(xs.max()) - x0, float(ys.max()) - y0
        annotations.append({"id": i + 1, "image_id": int(owners[i]),
                            "category_id": int(categories[i]), "iscrowd": 0,
                            "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
                            "area": round(w * h * 0.7, 2), "segmentation": [poly]})
    path = folder / "instances_train.json"
    with path.open("w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": c, "name": f"class{c}"} for c in range(1, 81)]}, f)
    return path


_RSS = """
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
"""

PREFLIGHT = _RSS + """
import sys, time, json
from pathlib import Path
from orchestrator.data.catalog import resolve_data
from orchestrator.data.check import preflight
from orchestrator.spec import parse_spec
json_file, image_root, checks = sys.argv[1], sys.argv[2], Path(sys.argv[3])
spec = parse_spec({"name": "scale", "model": {"arch": "mask_rcnn", "config": "x.yaml"},
                   "solver": {"reference_lr": 0.01, "max_iter": 1},
                   "data": {"train": {"json_file": json_file, "image_root": image_root}}})
notes = []
start = time.perf_counter()
data = resolve_data(spec, cache_root=checks.parent / "datasets", checks=checks)
resolved = time.perf_counter() - start
report, = preflight(data, cache=checks, note=notes.append)
print(json.dumps({"seconds": time.perf_counter() - start, "resolve_s": resolved,
                  "check_s": time.perf_counter() - start - resolved, "peak_rss": hwm(),
                  "images": report.num_images, "instances": report.num_annotations,
                  "usable": data.usable_images, "defects": report.counts,
                  "reused": any("reusing" in n for n in notes)}))
"""

WORKER = _RSS + """
import os, sys, time, json, resource
from pathlib import Path
from detectron2.data import DatasetFromList, get_detection_dataset_dicts
from detectron2.data.datasets import register_coco_instances
from orchestrator.data.cache import CacheSource, cached_dataset
mode, json_file, image_root, root, go = sys.argv[1:6]
register_coco_instances("scale_train", {}, json_file, image_root)
Path(f"{go}.ready.{os.getpid()}").touch()
while not Path(go).exists():  # both workers start loading together
    time.sleep(0.01)
reset_hwm()
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
before = rss()
start = time.perf_counter()
if mode == "today":
    dataset = DatasetFromList(get_detection_dataset_dicts(["scale_train"]), copy=False)
else:
    dataset = cached_dataset([CacheSource(json_file, image_root)], root=Path(root))
seconds = time.perf_counter() - start
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
child = child * 1024 if child != children else 0  # this worker ran the parser child
print(json.dumps({"seconds": seconds, "added_rss": hwm() - before, "items": len(dataset),
                  "child_peak_rss": child}))
"""


def preflight(json_file: Path, image_root: Path, checks: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", PREFLIGHT, str(json_file), str(image_root),
                          str(checks)], check=True, capture_output=True, text=True,
                         env=_env()).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def two_workers(mode: str, json_file: Path, image_root: Path, root: Path) -> list[dict]:
    go = root.parent / f"go-{mode}-{time.time_ns()}"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, mode, str(json_file),
                               str(image_root), str(root), str(go)], env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    while (len(list(go.parent.glob(f"{go.name}.ready.*"))) < 2
           and all(p.poll() is None for p in procs)):
        time.sleep(0.1)  # both have imported detectron2 and wait for the start signal
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} worker failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _gb(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def _preflight_line(label: str, result: dict[str, Any], load: float) -> str:
    return (f"{label:<22}{result['seconds']:6.1f} s (resolve_data {result['resolve_s']:.1f} s, "
            f"data check {result['check_s']:.1f} s), peak RSS {_gb(result['peak_rss'])} "
            f"[load {load:.1f}]")


def _line(label: str, results: list[dict]) -> str:
    return (f"{label:<28}" + "   ".join(
        f"worker {i}: {r['seconds']:6.1f} s, +{_gb(r['added_rss'])}"
        for i, r in enumerate(results)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of COCO 2017 train's size (1.0 = 118k images)")
    parser.add_argument("--keep", type=Path, help="write (or reuse) the dataset here")
    parser.add_argument("--scoring-images", type=int, default=5000,
                        help="images of the scoring set (COCO val has 5,000); 0 skips scoring")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "data"
        json_file = folder / "instances_train.json"
        started = time.perf_counter()
        if not json_file.is_file():
            json_file = write_dataset(folder, args.scale)
        written = time.perf_counter() - started
        json_mib = json_file.stat().st_size / 2**20
        image_root = folder / "images"
        cache = Path(tmp) / "cache"
        checks = Path(tmp) / "orchestrator" / "checks"
        cold_load = os.getloadavg()[0]
        check = preflight(json_file, image_root, checks)
        cached_load = os.getloadavg()[0]
        cached = preflight(json_file, image_root, checks)
        today = two_workers("today", json_file, image_root, cache)
        first = two_workers("cached", json_file, image_root, cache)
        second = two_workers("cached", json_file, image_root, cache)
        serialized = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    print(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"({os.cpu_count()} CPUs); at end: {os.getloadavg()[0]:.1f}")
    print(f"dataset: {check['images']} images, {check['instances']} polygon instances, json "
          f"{json_mib:.0f} MiB (written in {written:.0f} s), {today[0]['items']} usable "
          f"images; cache {serialized / 2**20:.0f} MiB")
    print(_preflight_line("pre-flight, cold:", check, cold_load))
    print(_preflight_line("pre-flight, cached:", cached, cached_load))
    same = cached["defects"] == check["defects"] and cached["usable"] == check["usable"]
    print(f"pre-flight cold/cached: {check['seconds'] / cached['seconds']:.0f}x the time, "
          f"{check['peak_rss'] / cached['peak_rss']:.1f}x the peak RSS; cached run reused the "
          f"check: {'yes' if cached['reused'] else 'NO'}; same findings: "
          f"{'yes' if same else 'NO'} ({check['defects'] or 'no defects'})")
    print(_line("today (each parses):", today))
    print(_line("cached, first submit:", first)
          + f"   (parser child peak {_gb(max(r['child_peak_rss'] for r in first))})")
    print(_line("cached, second submit:", second))
    today_rss = max(r["added_rss"] for r in today)
    cached_rss = max(r["added_rss"] for r in first + second)
    parse = max(r["seconds"] for r in today)
    again = max(r["seconds"] for r in second)
    print(f"per-worker added RSS cached/today: {cached_rss / today_rss:.3f} "
          f"({_gb(cached_rss)} vs {_gb(today_rss)})")
    print(f"cache speed-up: second load {again:.2f} s vs parse {parse:.1f} s = "
          f"{again / parse:.3f} of the parse time ({parse / again:.0f}x)")
    if args.scoring_images > 0:
        from coco_scoring import report_lines, scoring_benchmark  # this script's folder

        print(f"scoring (load average {os.getloadavg()[0]:.1f}):")
        for line in report_lines(scoring_benchmark(args.scoring_images)):
            print("  " + line)


if __name__ == "__main__":
    main()
