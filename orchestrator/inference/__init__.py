"""Inference from a tracked run: load its model, predict images, draw and export predictions.

``loading`` turns an MLflow run into a ready model, ``predictor`` runs one image through a
model (as detectron2's ``DefaultPredictor``), ``draw`` renders predictions and ``predict``
writes PNGs and a COCO-style JSON for a set of images (plus a COCO panoptic export for panoptic
models, ``panoptic``).
"""

from orchestrator.inference.draw import draw_records, label_for
from orchestrator.inference.loading import LoadedRun, load_run
from orchestrator.inference.panoptic import PanopticExport, PanopticOutput
from orchestrator.inference.predict import (
    PredictResult,
    find_images,
    predict_images,
    write_prediction,
)
from orchestrator.inference.predictor import predict_output, predict_records, read_rgb
from orchestrator.inference.progress import predict_with_progress

__all__ = [
    "LoadedRun",
    "PanopticExport",
    "PanopticOutput",
    "PredictResult",
    "draw_records",
    "find_images",
    "label_for",
    "load_run",
    "predict_images",
    "predict_output",
    "predict_records",
    "predict_with_progress",
    "read_rgb",
    "write_prediction",
]
