"""``GlobalMasks``: image-level low-resolution mask probabilities, kept unexpanded in ``Instances``.

Why it exists: CondInst-style models predict each instance's mask over the whole (padded) input
at a stride. Expanding all of them to the original image size inside the model is what ran a
user's evaluation out of memory (FACTS section 6), so a model may instead hand the evaluator
these small masks plus the two numbers needed to expand them later, chunk by chunk
(``orchestrator.evaluation.postprocess.global_mask_chunks``).

Like detectron2's ``ROIMasks`` it is a per-instance structure: ``Instances`` can hold, index and
move it (``__len__``, ``__getitem__``, ``to``).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["GlobalMasks"]


class GlobalMasks:
    """N masks of probabilities in [0, 1] covering the padded network input at ``stride``.

    Args:
        tensor: ``(N, h, w)`` probabilities; ``h * stride`` x ``w * stride`` is the padded input.
        stride: how many input pixels one mask pixel spans (CondInst: ``MASK_OUT_STRIDE`` = 4).
            Expansion to the input uses CondInst's ``aligned_bilinear`` (1 = already at input
            resolution).
        input_size: ``(height, width)`` of the un-padded network input; the rest is padding
            and is cropped off before resizing to the original image size.
    """

    def __init__(self, tensor: torch.Tensor, *, stride: int, input_size: tuple[int, int]) -> None:
        if tensor.dim() != 3:
            raise ValueError(f"GlobalMasks takes (N, h, w) masks, got shape {tuple(tensor.shape)}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.tensor = tensor
        self.stride = int(stride)
        self.input_size = (int(input_size[0]), int(input_size[1]))

    def _like(self, tensor: torch.Tensor) -> GlobalMasks:
        return GlobalMasks(tensor, stride=self.stride, input_size=self.input_size)

    def to(self, device: Any) -> GlobalMasks:
        return self._like(self.tensor.to(device))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def __getitem__(self, item: Any) -> GlobalMasks:
        tensor = self.tensor[item]
        if tensor.dim() != 3:  # an int index; Instances only ever passes slices and masks
            raise ValueError(f"indexing GlobalMasks with {item!r} gave shape {tuple(tensor.shape)}")
        return self._like(tensor)

    def __repr__(self) -> str:
        return (f"GlobalMasks(num_instances={len(self)}, stride={self.stride}, "
                f"input_size={self.input_size})")
