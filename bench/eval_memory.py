"""How much memory and time does CondInst's mask postprocess take? Naive vs chunked, on CPU.

The field case (FACTS section 6): 100 instances, stride-4 mask probabilities for an 800x608
(padded) input, i.e. 200x152, expanded to a 3648x2736 photo; plus a smaller 1333x800 image.

* naive: CondInst's reference postprocess on all masks at once (aligned_bilinear, crop,
  bilinear resize to the photo, ``> 0.5`` into a float tensor), timed alone and together with
  detectron2's per-instance RLE encoding (what its COCOEvaluator then does with them);
* ours: ``orchestrator.evaluation`` chunked (256 MiB budget, the spec's default), straight to
  RLEs (the evaluator's path);
* ours-bool: the same chunks collected into one bool N x H x W tensor.

Each runs in its own subprocess, so peaks do not mix. Added peak memory = the process's peak
RSS during the call (``VmHWM`` after resetting it through ``/proc/self/clear_refs``; a psutil
sampling thread where that is not allowed) minus its RSS just before the call, after a small
warm-up, so torch's own ~0.5 GB is not counted; the largest over ``--repeat`` calls. Times are
the fastest of those calls (the machine may be shared: CPU time, all threads, is printed
too). Masks are compared through the SHA-256
of their RLEs (equal RLEs <=> equal binary masks).

The ``panoptic`` case: panoptic BlendMask's inference after the instance masks exist (100 bool
masks at 3648x2736, already allocated, not counted) from 54-class semantic logits as the head
returns them (stride-4 200x152 logits upsampled x4 to the 800x608 padded input):

* pan-naive: detectron2's PanopticFPN path, ``sem_seg_postprocess`` to full size, ``argmax``,
  ``combine_semantic_and_instance_outputs``;
* pan-ours: ``orchestrator.models.panoptic`` (uint8 labels a chunk of classes at a time under the
  chunk budget, then the bounded combine).

The two panoptic outputs (ids and segments, less the things' ``area`` detectron2 lacks) are
compared through their SHA-256.

    .venv/bin/python bench/eval_memory.py [--case large|small|panoptic|all] [--chunk-mib 256]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# name: (instances, stride, padded input, un-padded input, output), sizes as (height, width)
CASES: dict[str, tuple[int, int, tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "large": (100, 4, (800, 608), (800, 600), (3648, 2736)),
    "small": (100, 4, (1344, 800), (1333, 800), (1333, 800)),
}
IMPLS = ("naive", "ours", "ours-bool")
# instances, classes, head output (stride 4), un-padded input, output; sizes as (height, width)
PANOPTIC = (100, 54, (200, 152), (800, 600), (3648, 2736))
PAN_IMPLS = ("pan-naive", "pan-ours")
# MODEL.PANOPTIC_FPN.COMBINE: OVERLAP_THRESH, STUFF_AREA_LIMIT, INSTANCES_CONFIDENCE_THRESH
COMBINE = (0.5, 4096, 0.45)
MIB = 2**20


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class PeakRSS:
    """Peak RSS over a ``with`` block: the kernel's high-water mark if it can be reset, else a
    psutil sampling thread (1 ms)."""

    def __enter__(self) -> PeakRSS:
        self.before = _rss()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._sampler: threading.Thread | None = None
        except OSError:
            self._peak, self._done = self.before, threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self._peak = max(self._peak, _rss())

    def __exit__(self, *exc: object) -> None:
        if self._sampler is None:
            status = Path("/proc/self/status").read_text().splitlines()
            self.peak = next(int(x.split()[1]) * 1024 for x in status if x.startswith("VmHWM"))
        else:
            self._done.set()
            self._sampler.join()
            self.peak = max(self._peak, _rss())
        self.added = self.peak - self.before


def _blobs(n: int, size: tuple[int, int], seed: int = 0) -> Any:
    """Mask probabilities that look like predictions: one soft ellipse per instance."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(size[0], dtype=torch.float32)[None, :, None]
    xs = torch.arange(size[1], dtype=torch.float32)[None, None, :]
    cy, cx = (torch.rand(2, n, 1, 1, generator=g) * torch.tensor(size).view(2, 1, 1, 1))
    ry, rx = torch.rand(2, n, 1, 1, generator=g) * torch.tensor(size).view(2, 1, 1, 1) / 4 + 2
    d = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2
    return torch.sigmoid(4 * (1 - d))


def _naive(probs: Any, stride: int, inp: tuple[int, int], out: tuple[int, int]) -> Any:
    from torch.nn import functional as F

    from orchestrator.evaluation import aligned_bilinear

    masks = aligned_bilinear(probs[:, None], stride)[:, :, : inp[0], : inp[1]]
    masks = F.interpolate(masks, size=out, mode="bilinear", align_corners=False)
    return (masks[:, 0] > 0.5).float()  # the reference keeps float 0/1 masks


def _d2_rles(masks: Any) -> list[str]:
    """detectron2's COCO export of dense masks (instances_to_coco_json)."""
    import numpy as np
    import pycocotools.mask as mask_util

    return [mask_util.encode(np.array(m[:, :, None], order="F", dtype="uint8"))[0]["counts"]
            .decode() for m in masks]


def _ours(probs: Any, stride: int, inp: tuple[int, int], out: tuple[int, int],
          chunk_bytes: int) -> Any:
    from orchestrator.evaluation import encode_rles, global_mask_chunks

    chunks = global_mask_chunks(probs, stride=stride, input_size=inp, output_size=out,
                                chunk_bytes=chunk_bytes)
    return [r["counts"] for r in encode_rles(chunks)]


def _ours_bool(probs: Any, stride: int, inp: tuple[int, int], out: tuple[int, int],
               chunk_bytes: int) -> Any:
    from orchestrator.evaluation import collect_bitmasks, global_mask_chunks

    chunks = global_mask_chunks(probs, stride=stride, input_size=inp, output_size=out,
                                chunk_bytes=chunk_bytes)
    return collect_bitmasks(chunks, len(probs), out)


def _measure(fn: Callable[[], Any]) -> tuple[Any, float, float, int]:
    """(result, wall seconds, CPU seconds of all threads, added peak RSS bytes)."""
    with PeakRSS() as peak:
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return result, seconds, cpu, peak.added


def worker(impl: str, case: str, chunk_bytes: int, repeat: int) -> dict[str, Any]:
    """One implementation on one case, in this (fresh) process."""
    n, stride, padded, inp, out = CASES[case]
    probs = _blobs(n, (padded[0] // stride, padded[1] // stride))
    impls: dict[str, Callable[..., Any]] = {
        "naive": _naive, "ours": functools.partial(_ours, chunk_bytes=chunk_bytes),
        "ours-bool": functools.partial(_ours_bool, chunk_bytes=chunk_bytes),
    }
    fn = impls[impl]
    fn(probs[:2], stride, inp, (64, 48))  # warm-up: thread pools, lazy imports
    call = functools.partial(fn, probs, stride, inp, out)
    runs = [_measure(call)[1:] for _ in range(repeat - 1)]  # results dropped at once
    result, seconds, cpu, added = _measure(call)
    runs.append((seconds, cpu, added))
    record: dict[str, Any] = {"seconds": min(r[0] for r in runs),
                              "cpu_seconds": min(r[1] for r in runs),
                              "added_bytes": max(r[2] for r in runs)}
    if impl == "naive":
        start = time.perf_counter()
        counts = _d2_rles(result)
        record["with_rle_seconds"] = record["seconds"] + time.perf_counter() - start
    elif impl == "ours-bool":
        counts = _d2_rles(result)
    else:
        counts = result
    record["digest"] = hashlib.sha256("\n".join(counts).encode()).hexdigest()
    return record


def _run(impl: str, case: str, chunk_mib: int, repeat: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", impl, "--case", case,
           "--chunk-mib", str(chunk_mib), "--repeat", str(repeat)]
    proc = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _pan_inputs() -> tuple[Any, Any, tuple[int, int], tuple[int, int]]:
    """(instances with bool full-size masks, (C, 800, 608) logits, input size, output size)."""
    import torch
    from detectron2.structures import Instances
    from torch.nn import functional as F

    from orchestrator.evaluation import collect_bitmasks, global_mask_chunks

    n, classes, head, inp, out = PANOPTIC
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(1, classes, head[0] // 4, head[1] // 4, generator=g) * 4
    logits = F.interpolate(coarse, size=head, mode="bilinear", align_corners=False)
    logits = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)[0]
    inst = Instances(out)
    inst.scores = torch.rand(n, generator=g)
    inst.pred_classes = torch.randint(0, 80, (n,), generator=g)
    chunks = global_mask_chunks(_blobs(n, head), stride=4, input_size=inp, output_size=out)
    inst.pred_masks = collect_bitmasks(chunks, n, out)
    return inst, logits.contiguous(), inp, out


def _pan_naive(inst: Any, logits: Any, inp: tuple[int, int], out: tuple[int, int],
               chunk_bytes: int) -> Any:
    from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
    from detectron2.modeling.postprocessing import sem_seg_postprocess

    labels = sem_seg_postprocess(logits, inp, *out).argmax(dim=0)
    return combine_semantic_and_instance_outputs(inst, labels, *COMBINE)


def _pan_ours(inst: Any, logits: Any, inp: tuple[int, int], out: tuple[int, int],
              chunk_bytes: int) -> Any:
    from orchestrator.models.panoptic import combine_panoptic, semantic_labels

    labels = semantic_labels(logits, inp, out, chunk_bytes=chunk_bytes)
    overlap, stuff, score = COMBINE
    return combine_panoptic(inst, labels, overlap_threshold=overlap, stuff_area_limit=stuff,
                            instances_score_thresh=score)


def _pan_digest(result: Any) -> str:
    ids, segments = result
    common = [{k: v for k, v in s.items() if k != "area" or not s["isthing"]} for s in segments]
    digest = hashlib.sha256(ids.cpu().numpy().tobytes())
    digest.update(json.dumps(common, sort_keys=True).encode())
    return digest.hexdigest()


def pan_worker(impl: str, chunk_bytes: int, repeat: int) -> dict[str, Any]:
    """One panoptic implementation, in this (fresh) process, its inputs made beforehand."""
    inst, logits, inp, out = _pan_inputs()
    fn = {"pan-naive": _pan_naive, "pan-ours": _pan_ours}[impl]
    small = inst[:2]
    small.pred_masks = small.pred_masks[:, :64, :48].clone()
    small._image_size = (64, 48)
    fn(small, logits[:, :64, :48], (64, 48), (64, 48), chunk_bytes)  # warm-up
    call = functools.partial(fn, inst, logits, inp, out, chunk_bytes)
    runs = [_measure(call)[1:] for _ in range(repeat - 1)]
    result, seconds, cpu, added = _measure(call)
    runs.append((seconds, cpu, added))
    return {"seconds": min(r[0] for r in runs), "cpu_seconds": min(r[1] for r in runs),
            "added_bytes": max(r[2] for r in runs), "digest": _pan_digest(result),
            "segments": len(result[1])}


def pan_report(runs: dict[str, dict[str, Any]], chunk_mib: int) -> None:
    n, classes, _, _, out = PANOPTIC
    naive, ours = runs["pan-naive"], runs["pan-ours"]
    print(f"\npanoptic: {n} instances + {classes} semantic classes -> {out[0]}x{out[1]}, "
          f"chunk budget {chunk_mib} MiB")
    for impl, r in runs.items():
        print(f"  {impl:9s}  added peak {r['added_bytes'] / MIB:7.0f} MiB  "
              f"time {r['seconds']:6.2f} s  cpu {r['cpu_seconds']:6.2f} s  "
              f"segments {r['segments']}")
    print(f"  memory naive/ours: {naive['added_bytes'] / max(ours['added_bytes'], 1):.1f}x   "
          f"time naive/ours: {naive['seconds'] / ours['seconds']:.2f}x")
    same = naive["digest"] == ours["digest"]
    print(f"  panoptic outputs identical: {'yes' if same else 'NO'}")


def report(case: str, runs: dict[str, dict[str, Any]], chunk_mib: int) -> None:
    n, _, _, _, out = CASES[case]
    naive, ours = runs["naive"], runs["ours"]
    print(f"\n{case}: {n} masks -> {out[0]}x{out[1]}, chunk budget {chunk_mib} MiB")
    for impl, r in runs.items():
        extra = f"  (+ RLE encoding: {r['with_rle_seconds']:.2f} s)" if "with_rle_seconds" in r \
            else ""
        print(f"  {impl:9s}  added peak {r['added_bytes'] / MIB:7.0f} MiB  "
              f"time {r['seconds']:6.2f} s  cpu {r['cpu_seconds']:6.2f} s{extra}")
    print(f"  memory naive/ours: {naive['added_bytes'] / max(ours['added_bytes'], 1):.0f}x   "
          f"time naive/ours: {naive['seconds'] / ours['seconds']:.2f}x "
          f"(with naive's RLE encoding: {naive['with_rle_seconds'] / ours['seconds']:.2f}x), "
          f"cpu naive/ours: {naive['cpu_seconds'] / ours['cpu_seconds']:.2f}x")
    same = len({r["digest"] for r in runs.values()}) == 1
    print(f"  masks bit-identical: {'yes' if same else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=[*CASES, "panoptic", "all"], default="all")
    parser.add_argument("--chunk-mib", type=int, default=256, help="chunk budget (MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="calls per implementation")
    parser.add_argument("--worker", choices=[*IMPLS, *PAN_IMPLS], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker in PAN_IMPLS:
        print(json.dumps(pan_worker(args.worker, args.chunk_mib * MIB, args.repeat)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.case, args.chunk_mib * MIB, args.repeat)))
        return
    for case in [*CASES, "panoptic"] if args.case == "all" else [args.case]:
        if case == "panoptic":
            pan_report({impl: _run(impl, case, args.chunk_mib, args.repeat)
                        for impl in PAN_IMPLS}, args.chunk_mib)
            continue
        runs = {impl: _run(impl, case, args.chunk_mib, args.repeat) for impl in IMPLS}
        report(case, runs, args.chunk_mib)


if __name__ == "__main__":
    main()
