"""One image through a detectron2 model, as ``DefaultPredictor`` does, to COCO records.

Why not ``DefaultPredictor`` itself: it builds its own model from a cfg, while the training
hook must reuse the live model; and masks must go through the chunked postprocess (models may
return ``GlobalMasks``), which ``instances_to_coco_records`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from PIL import UnidentifiedImageError

from orchestrator.evaluation import DEFAULT_CHUNK_BYTES, instances_to_coco_records

__all__ = ["read_rgb", "predict_records", "predict_output", "output_records"]


def read_rgb(path: str | Path) -> np.ndarray:
    """The image as ``H x W x 3`` uint8 RGB (EXIF orientation applied, as detectron2 reads).

    Raises ``OSError`` or ``ValueError`` for files that are not readable images.
    """
    try:
        return np.ascontiguousarray(detection_utils.read_image(str(path), format="RGB"))
    except UnidentifiedImageError:  # its message is a file object's repr
        raise ValueError("Pillow cannot identify it (corrupt, or not an image format)") from None
    except SyntaxError as exc:  # PIL reports some malformed headers this way
        raise ValueError(str(exc)) from exc


def _model_input(cfg: CfgNode, rgb: np.ndarray) -> dict[str, Any]:
    """What ``DefaultPredictor`` feeds the model: resized, in cfg.INPUT.FORMAT, CHW float."""
    image = rgb[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else rgb
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(np.ascontiguousarray(image))
    tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    return {"image": tensor, "height": rgb.shape[0], "width": rgb.shape[1]}


@torch.no_grad()
def predict_output(model: torch.nn.Module, cfg: CfgNode, rgb: np.ndarray) -> dict[str, Any]:
    """The model's output dict for one RGB image (``instances``, and ``panoptic_seg`` for a
    model that combines). ``model`` must already be in eval mode."""
    output: dict[str, Any] = model([_model_input(cfg, rgb)])[0]
    return output


def output_records(output: dict[str, Any], cfg: CfgNode, *,
                   image_id: int = 0) -> list[dict[str, Any]]:
    """COCO result records (XYWH ``bbox``, ``score``, ``category_id`` = class index, RLE
    ``segmentation``) of an output's ``instances``."""
    ours = cfg.get("ORCHESTRATOR", {})
    records: list[dict[str, Any]] = instances_to_coco_records(
        output["instances"], image_id,
        chunk_bytes=ours.get("EVAL_CHUNK_BYTES", DEFAULT_CHUNK_BYTES))
    return records


def predict_records(model: torch.nn.Module, cfg: CfgNode, rgb: np.ndarray, *,
                    image_id: int = 0) -> list[dict[str, Any]]:
    """The records (``output_records``) of one RGB image. ``model`` must be in eval mode."""
    return output_records(predict_output(model, cfg, rgb), cfg, image_id=image_id)
