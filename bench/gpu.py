"""On one CUDA GPU: what does submit cost against plain detectron2, and what does the chunked
mask postprocess save? Meant to finish in under 8 minutes.

1. jobs/demo.yaml's model on the GPU, plain detectron2 (one process) vs ``orchestrator submit``
   with 1 worker (``resources.gpus_per_worker=1``), with AMP off and on
   (``SOLVER.AMP.ENABLED``): steady-state s/iter (median wall-clock gap, as bench/overhead.py
   measures it) and the ratio.
2. Peak CUDA memory of the mask postprocess at 3648x2736 (100 instances), naive (all masks
   expanded at once, as the reference implementations do) vs ``orchestrator.evaluation``'s
   chunked path, for CondInst's global masks and Mask R-CNN's ROI masks; the binary masks are
   compared too.

Without CUDA it prints why and exits 2 having measured nothing.

    .venv/bin/python bench/gpu.py [--iters 200] [--skip-training]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SIZE = (3648, 2736)  # (height, width) of the field photos (FACTS section 6)
INSTANCES = 100
MIB = 2**20


def _peak(fn):  # type: ignore[no-untyped-def]
    """(result, added peak CUDA bytes over what was allocated before)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - before


def postprocess_memory(chunk_bytes: int) -> list[str]:
    import torch
    from detectron2.layers.mask_ops import paste_masks_in_image
    from torch.nn import functional as F

    from orchestrator.evaluation import (
        aligned_bilinear,
        collect_bitmasks,
        global_mask_chunks,
        roi_mask_chunks,
    )

    device = torch.device("cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    lines = []
    # CondInst: stride-4 global masks over an 800x608 padded input (800x600 un-padded).
    probs = torch.rand(INSTANCES, 200, 152, generator=g).to(device)

    def naive_global() -> torch.Tensor:
        masks = aligned_bilinear(probs[:, None], 4)[:, :, :800, :600]
        masks = F.interpolate(masks, size=SIZE, mode="bilinear", align_corners=False)
        return (masks[:, 0] > 0.5).float()

    def chunked_global() -> torch.Tensor:
        chunks = global_mask_chunks(probs, stride=4, input_size=(800, 600), output_size=SIZE,
                                    chunk_bytes=chunk_bytes)
        return collect_bitmasks(chunks, INSTANCES, SIZE, device=device)

    naive, naive_peak = _peak(naive_global)
    naive = naive.bool()
    chunked, chunked_peak = _peak(chunked_global)
    same = bool(torch.equal(naive, chunked))
    del naive, chunked
    lines.append(f"CondInst global masks: naive {naive_peak / MIB:8.0f} MiB, chunked "
                 f"{chunked_peak / MIB:6.0f} MiB ({naive_peak / chunked_peak:.1f}x less), "
                 f"identical masks: {same}")
    # Mask R-CNN / BlendMask: 28x28 ROI masks pasted into their boxes.
    rois = torch.rand(INSTANCES, 28, 28, generator=g).to(device)
    xy = torch.rand(INSTANCES, 2, generator=g) * torch.tensor([SIZE[1] - 600, SIZE[0] - 600])
    wh = torch.rand(INSTANCES, 2, generator=g) * 500 + 50
    boxes = torch.cat([xy, xy + wh], dim=1).to(device)

    def naive_roi() -> torch.Tensor:
        return paste_masks_in_image(rois, boxes, SIZE, threshold=0.5)

    def chunked_roi() -> torch.Tensor:
        chunks = roi_mask_chunks(rois, boxes, output_size=SIZE, chunk_bytes=chunk_bytes)
        return collect_bitmasks(chunks, INSTANCES, SIZE, device=device)

    naive, naive_peak = _peak(naive_roi)
    chunked, chunked_peak = _peak(chunked_roi)
    same = bool(torch.equal(naive.bool(), chunked))
    lines.append(f"Mask R-CNN ROI masks : detectron2 paste {naive_peak / MIB:8.0f} MiB, chunked "
                 f"{chunked_peak / MIB:6.0f} MiB ({naive_peak / chunked_peak:.1f}x less), "
                 f"identical masks: {same}")
    return lines


def training_ratios(iters: int) -> list[str]:
    sys.path.insert(0, str(BENCH))
    import overhead  # bench/overhead.py: the same measurement as on CPU

    lines = []
    gpu = ("resources.gpus_per_worker=1",)
    for amp in (False, True):
        opts = (f"model.opts=[SOLVER.AMP.ENABLED, {str(amp).lower()}]",)
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            plain = overhead.run_plain(Path(a), iters, iters, device="cuda", extra=gpu + opts)
            ray = overhead.run_submit(Path(b), iters, iters, extra=gpu + opts)
        lines.append(f"AMP {'on ' if amp else 'off'}: plain {plain.wall:.4f} s/iter, submit "
                     f"{ray.wall:.4f} s/iter, ratio submit/plain: {ray.wall / plain.wall:.3f}x; "
                     f"first iteration {plain.first:.1f} s vs {ray.first:.1f} s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200, help="iterations per training run")
    parser.add_argument("--chunk-mib", type=int, default=256)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU: torch.cuda.is_available() is False here; "
              "nothing was measured", file=sys.stderr)
        raise SystemExit(2)
    print(f"GPU: {torch.cuda.get_device_name()}, load average {os.getloadavg()[0]:.1f}")
    for line in postprocess_memory(args.chunk_mib * MIB):
        print(line)
    if not args.skip_training:
        for line in training_ratios(args.iters):
            print(line)


if __name__ == "__main__":
    main()
