"""What do deformable blocks cost on CPU? Training s/iter of the BlendMask R-18 demo model with
and without deformable res4/res5 (``configs/blendmask/blendmask_R_18{,_dcn}_demo.yaml``), and
one 3x3 layer: torchvision's deform_conv2d (our DeformConv / ModulatedDeformConv) vs conv2d.

In-process, no Ray: one model step = forward + backward + SGD on a batch of 2 images of
128 px (the demo's per-worker batch). The two models alternate in rounds, so load from
other processes hits both alike; the ratio is the number to read.

    .venv/bin/python bench/deform_speed.py                 # ~1-2 min on a quiet 2-core box
    .venv/bin/python bench/deform_speed.py --rounds 5 --steps 10 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks

from orchestrator.models.arch import get_arch
from orchestrator.models.deform import ModulatedDeformConv

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"plain": "configs/blendmask/blendmask_R_18_demo.yaml",
           "deformable": "configs/blendmask/blendmask_R_18_dcn_demo.yaml"}


def _cfg(config: str) -> CfgNode:
    cfg = get_cfg()
    add = get_arch("blendmask").add_config
    assert add is not None
    add(cfg)
    cfg.merge_from_file(str(REPO / config))
    cfg.MODEL.FCOS.NUM_CLASSES = cfg.MODEL.BASIS_MODULE.NUM_CLASSES = 4
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _batch(n: int, size: int = 128) -> list[dict[str, object]]:
    """n images with two polygon instances each, in detectron2's model input format."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[8.0, 10.0, 60.0, 70.0], [50.0, 40.0, 120.0, 110.0]]))
        inst.gt_classes = torch.tensor([1, 3])
        inst.gt_masks = PolygonMasks([[[8, 10, 60, 10, 60, 70, 8, 70.0]],
                                      [[50, 40, 120, 40, 85, 110.0]]])
        image = torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=g)
        batch.append({"image": image, "instances": inst,
                      "basis_sem": torch.zeros((size, size), dtype=torch.int64)})
    return batch


def _model_step(name: str) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model(_cfg(CONFIGS[name])).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batch = _batch(2)

    def step() -> None:
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return step


def _layer_step(name: str) -> Callable[[], None]:
    """One 3x3, 256-channel layer on a 2 x 256 x 16 x 16 map, forward + backward."""
    torch.manual_seed(0)
    x = torch.randn(2, 256, 16, 16, requires_grad=True)
    conv = ModulatedDeformConv(256, 256, 3, padding=1, bias=False)
    offset = (0.5 * torch.randn(2, 18, 16, 16)).requires_grad_()
    mask = torch.rand(2, 9, 16, 16, requires_grad=True)

    def step() -> None:
        out = (conv(x, offset, mask) if name == "deformable"
               else F.conv2d(x, conv.weight, padding=1))
        out.sum().backward()
    return step


def _time(steps: dict[str, Callable[[], None]], rounds: int, per_round: int,
          warmup: int) -> dict[str, float]:
    """Median seconds per step of each callable, alternating them round by round."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            samples[name].append((time.perf_counter() - start) / per_round)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="model steps per round")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the demo's workers have 1 CPU each)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layer = _time({n: _layer_step(n) for n in ("plain", "deformable")}, args.rounds,
                  4 * args.steps, warmup=2)
    print(f"3x3 layer 256ch 16x16, fwd+bwd: conv2d {layer['plain'] * 1e3:.1f} ms, "
          f"modulated deform_conv2d {layer['deformable'] * 1e3:.1f} ms "
          f"({layer['deformable'] / layer['plain']:.2f}x)", flush=True)
    model = _time({n: _model_step(n) for n in CONFIGS}, args.rounds, args.steps, warmup=2)
    print(f"BlendMask R-18 demo train step (2 x 128 px, {args.threads} thread(s)): "
          f"plain {model['plain']:.3f} s/iter, deformable res4/res5 "
          f"{model['deformable']:.3f} s/iter ({model['deformable'] / model['plain']:.2f}x)",
          flush=True)


if __name__ == "__main__":
    main()
