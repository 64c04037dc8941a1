"""What BlendMask and CondInst share: pixel normalisation, backbone and the FCOS stage."""

from __future__ import annotations

from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.modeling import Backbone, build_backbone, build_proposal_generator
from detectron2.structures import ImageList, Instances
from torch import nn

__all__ = ["OneStageSegmentor"]


class OneStageSegmentor(nn.Module):
    """Base of the FCOS-based instance segmentors: normalise, pad, run the backbone.

    Pixel mean/std are non-persistent buffers: they follow ``.to(device)`` but stay out of
    the state dict, matching the reference checkpoints.
    """

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, *, backbone: Backbone, proposal_generator: nn.Module,
                 pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @staticmethod
    def base_config(cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        return {"backbone": backbone,
                "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
                "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN), "pixel_std": tuple(cfg.MODEL.PIXEL_STD)}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalise, then zero-pad to a multiple of the backbone's size divisibility."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def gt_instances(self, batched_inputs: list[dict[str, Any]]) -> list[Instances]:
        if any("instances" not in x for x in batched_inputs):
            raise ValueError("training inputs need 'instances' (use a mapper with annotations)")
        return [x["instances"].to(self.device) for x in batched_inputs]
