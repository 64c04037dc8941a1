"""Panoptic predictions of ``predict``: stuff regions drawn under the instances, and a COCO
panoptic export (json + one segment-id PNG per image).

A model that combines its outputs returns ``panoptic_seg`` = ``(ids, segments_info)``
(issue 22 contract, section 3): thing segments carry the class index 0..T-1, stuff segments
the semantic label 1..S. The export needs one category id space for both, and it must agree
with ``predictions.json`` (whose category ids are the model's class indices):

* thing class ``c`` -> category id ``c`` (as in ``predictions.json``);
* stuff label ``l`` (1..S) -> category id ``T + l - 1``, i.e. stuff follows the things.

``categories`` lists both with ``isthing`` and the names from ``classes.json`` and
``stuff_classes.json`` ("class N" / "stuff N" for runs that did not record them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from detectron2.config import CfgNode
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

from orchestrator.data.fix import write_json_atomic
from orchestrator.data.panoptic import write_panoptic_png
from orchestrator.evaluation.panoptic_evaluator import panoptic_annotation

__all__ = ["PANOPTIC_DIR", "PANOPTIC_FILE", "PanopticExport", "PanopticOutput",
           "draw_stuff", "num_thing_classes", "panoptic_of", "stuff_label"]

PANOPTIC_FILE = "panoptic.json"
PANOPTIC_DIR = "panoptic"
_PALETTE = colormap(rgb=True, maximum=1)


@dataclass(frozen=True)
class PanopticOutput:
    """One image's ``panoptic_seg`` on the CPU: the id map and its segments."""

    ids: npt.NDArray[np.int32]
    segments: list[dict[str, Any]]


def panoptic_of(output: Mapping[str, Any]) -> PanopticOutput | None:
    """The model output's ``panoptic_seg`` (None when the model does not combine)."""
    if "panoptic_seg" not in output:
        return None
    ids, segments = output["panoptic_seg"]
    array = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    return PanopticOutput(array.astype(np.int32, copy=False), [dict(s) for s in segments])


def num_thing_classes(cfg: CfgNode, class_names: Sequence[str]) -> int:
    """T, where stuff ids start: the model's own class count (its outputs are indices into
    it), or the recorded class names for a model we do not know."""
    from orchestrator.models.arch import arch_for_cfg

    arch = arch_for_cfg(cfg)
    for key in arch.num_classes_keys if arch else ():
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, CfgNode) else None
        if isinstance(node, int):
            return node
    return len(class_names)


def stuff_label(label: int, stuff_names: Sequence[str]) -> str:
    """The name of stuff label ``label`` (1..S); ``"stuff N"`` when it was not recorded."""
    return stuff_names[label - 1] if 1 <= label <= len(stuff_names) else f"stuff {label}"


def draw_stuff(visualizer: Visualizer, panoptic: PanopticOutput,
               stuff_names: Sequence[str]) -> None:
    """Each stuff segment as a translucent region in its class's colour, labelled with its
    name; drawn before the instances so they stay on top."""
    for segment in panoptic.segments:
        if segment["isthing"]:
            continue
        label = int(segment["category_id"])
        mask = panoptic.ids == int(segment["id"])
        if mask.any():
            visualizer.draw_binary_mask(mask, color=_PALETTE[label % len(_PALETTE)],
                                        text=stuff_label(label, stuff_names), alpha=0.4)


@dataclass
class PanopticExport:
    """The COCO panoptic export of one ``predict`` call: ``add`` writes an image's PNG into
    ``out_dir/panoptic/`` as it comes, ``write`` the json at the end (each file atomically).

    Only segment lists are kept between images, never their pixels.
    """

    out_dir: Path
    num_things: int
    class_names: Sequence[str] = ()
    stuff_names: Sequence[str] = ()
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def category_id(self, segment: Mapping[str, Any]) -> int:
        """Things keep their class index; stuff label ``l`` becomes ``T + l - 1``."""
        category = int(segment["category_id"])
        return category if segment["isthing"] else self.num_things + category - 1

    def add(self, image_id: int, png_name: str, panoptic: PanopticOutput) -> None:
        folder = self.out_dir / PANOPTIC_DIR
        folder.mkdir(parents=True, exist_ok=True)
        write_panoptic_png(folder / png_name, panoptic.ids)
        self.annotations.append(panoptic_annotation(image_id, png_name, panoptic.ids,
                                                    panoptic.segments, self.category_id))

    def categories(self) -> list[dict[str, Any]]:
        """Every thing class and stuff label the export may use (plus any used beyond them)."""
        stuff = max([len(self.stuff_names), *(s["category_id"] - self.num_things + 1
                                              for a in self.annotations
                                              for s in a["segments_info"])])
        things = [{"id": c, "name": self.class_names[c] if c < len(self.class_names)
                   else f"class {c}", "isthing": 1} for c in range(self.num_things)]
        return things + [{"id": self.num_things + label - 1, "isthing": 0,
                          "name": stuff_label(label, self.stuff_names)}
                         for label in range(1, stuff + 1)]

    def write(self, images: Sequence[Mapping[str, Any]], info: Mapping[str, Any]) -> Path | None:
        """``out_dir/panoptic.json`` for the images that had a panoptic output (None: none)."""
        if not self.annotations:
            return None
        done = {a["image_id"] for a in self.annotations}
        document = {"info": dict(info), "images": [i for i in images if i["id"] in done],
                    "annotations": self.annotations, "categories": self.categories()}
        path = self.out_dir / PANOPTIC_FILE
        write_json_atomic(path, document)
        return path
