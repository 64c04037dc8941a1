"""Training mapper for BlendMask: detectron2's DatasetMapper plus the ``basis_sem`` target and,
for panoptic models, the stuff map ``sem_seg`` read from ``sem_seg_file_name``.

The reference precomputes the semantic map offline (one .npz per image); painting it here from
the instance annotations gives the same map with no preprocessing step for users.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import numpy.typing as npt
import pycocotools.mask as mask_util
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import polygons_to_bitmask

__all__ = ["DatasetMapperWithBasis", "paint_basis_sem", "read_sem_seg"]


def _annotation_mask(segmentation: Any, height: int, width: int) -> npt.NDArray[np.bool_]:
    """Binary mask of a polygon list, a COCO RLE (compressed or not) or a bitmask array."""
    if isinstance(segmentation, list):
        polygons = [np.asarray(p, dtype=np.float64) for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        return polygons_to_bitmask(polygons, height, width)
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = mask_util.frPyObjects(rle, height, width)
        return mask_util.decode(rle).astype(bool)
    return np.asarray(segmentation, dtype=bool)


def paint_basis_sem(annotations: list[dict[str, Any]], height: int,
                    width: int) -> npt.NDArray[np.uint8]:
    """uint8 H x W map: 0 = background, else contiguous class id + 1 of the annotation painted
    last (annotation order, crowd included, later ones overwrite earlier ones)."""
    sem = np.zeros((height, width), dtype=np.uint8)
    for ann in annotations:
        if "segmentation" not in ann:
            continue
        label = int(ann["category_id"]) + 1
        if label > 255:
            raise ValueError(f"basis_sem is uint8: class id {label - 1} is too large")
        sem[_annotation_mask(ann["segmentation"], height, width)] = label
    return sem


def read_sem_seg(dataset_dict: dict[str, Any], image_shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """The uint8 stuff map of a panoptic record (0 things, 1..S stuff, 255 void), checked to
    exist and to match its image, with errors naming the image."""
    name = dataset_dict.get("sem_seg_file_name")
    if not name:
        raise ValueError(f"{dataset_dict['file_name']}: a panoptic model trains on "
                         "'sem_seg_file_name' (the stuff map), and this record has none")
    sem = utils.read_image(name, format="L")
    sem = sem.squeeze(2) if sem.ndim == 3 else sem
    if sem.shape != tuple(image_shape[:2]):
        raise ValueError(f"{dataset_dict['file_name']}: stuff map {name} is {sem.shape}, "
                         f"the image is {tuple(image_shape[:2])}")
    return sem


class DatasetMapperWithBasis(DatasetMapper):
    """DatasetMapper that also returns ``basis_sem`` (int64 H x W, transformed like the image,
    nearest-neighbour resized) when BlendMask's auxiliary semantic loss is on, and ``sem_seg``
    (the same, from ``sem_seg_file_name``) when training a panoptic model."""

    @configurable
    def __init__(self, is_train: bool = True, *, basis_sem: bool = True,
                 panoptic: bool = False, **kwargs: Any) -> None:
        super().__init__(is_train, **kwargs)
        self.basis_sem = basis_sem and is_train
        self.panoptic = panoptic and is_train

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        ret: dict[str, Any] = super().from_config(cfg, is_train)
        ret["basis_sem"] = bool(cfg.MODEL.BASIS_MODULE.LOSS_ON)
        ret["panoptic"] = bool(cfg.MODEL.PANOPTIC_FPN.COMBINE.ENABLED)
        return ret

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        stuff = read_sem_seg(dataset_dict, image.shape) if self.panoptic else None
        sem = None
        if self.basis_sem:
            sem = paint_basis_sem(dataset_dict.get("annotations", []), *image.shape[:2])
        aug_input = T.AugInput(image, sem_seg=sem)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if aug_input.sem_seg is not None:
            dataset_dict["basis_sem"] = torch.as_tensor(aug_input.sem_seg.astype("int64"))
        if stuff is not None:  # nearest, like basis_sem: ids and 255 stay as they are
            stuff = transforms.apply_segmentation(stuff)
            dataset_dict["sem_seg"] = torch.as_tensor(np.ascontiguousarray(stuff).astype("int64"))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict
