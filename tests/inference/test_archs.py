"""Inference and drawing for every architecture, from an untrained model (no MLflow run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model

from orchestrator.inference.draw import draw_records
from orchestrator.inference.predictor import predict_records
from orchestrator.models.arch import get_arch
from tests.conftest import REPO

CONFIGS = {
    "mask_rcnn": "configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml",
    "blendmask": "configs/blendmask/blendmask_R_18_demo.yaml",
    "condinst": "configs/condinst/condinst_R_18_demo.yaml",
}


def _cfg(arch_name: str) -> CfgNode:
    cfg = get_cfg()
    arch = get_arch(arch_name)
    if arch.add_config is not None:
        arch.add_config(cfg)
    cfg.merge_from_file(str(REPO / CONFIGS[arch_name]))
    for key in arch.score_thresh_keys:  # keep every detection of an untrained model
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = 0.0
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


@pytest.mark.parametrize("arch_name", sorted(CONFIGS))
def test_every_arch_predicts_full_size_rle_masks_and_draws(arch_name: str) -> None:
    torch.manual_seed(0)
    cfg = _cfg(arch_name)
    model = build_model(cfg).eval()
    rgb = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    records = predict_records(model, cfg, rgb, image_id=7)
    assert records, f"{arch_name}: no detections at threshold 0"
    assert all(r["image_id"] == 7 and r["segmentation"]["size"] == [48, 80] for r in records)
    drawn = draw_records(rgb, records, ["a", "b", "c", "d"])
    assert drawn.shape == rgb.shape
