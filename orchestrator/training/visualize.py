"""Validation images with the model's predictions drawn, logged to MLflow at each evaluation.

Why: AP numbers say how much a model improved, pictures say how. The same few validation
images are drawn after every evaluation and logged as MLflow step images (key
``val/<file stem>``, step = iterations done at the reference batch), so the MLflow UI shows the
masks improving over a run. Rank 0 only, a handful of images, and no error here ever stops training.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase

from orchestrator.tracking.steps import StepAxis

__all__ = ["VisualizeHook", "DISPLAY_SCORE", "image_key"]

logger = logging.getLogger(__name__)

DISPLAY_SCORE = 0.5
"""Only predictions at least this confident are drawn (the eval threshold may be ~0)."""


def image_key(file_name: str) -> str:
    """MLflow image key of a validation file: ``val/<stem>`` with only allowed characters."""
    stem = re.sub(r"\.[^./]*$", "", file_name.replace("\\", "/").rsplit("/", 1)[-1])
    return "val/" + (re.sub(r"[^A-Za-z0-9_.\- ]", "_", stem) or "image")


class VisualizeHook(HookBase):
    """After each evaluation (the periodic ones and the final one, on ``TEST.EVAL_PERIOD`` as
    detectron2's ``EvalHook``), draw the first ``count`` images of the first test dataset.

    Args:
        tracking_uri, run_id: the MLflow run to log to.
        count: images to draw (0: the hook does nothing).
        eval_period: ``cfg.TEST.EVAL_PERIOD`` (0: only after the final evaluation).
        axis: the run's step axis, so runs of any worker count line up (default: iterations).
    """

    def __init__(self, *, tracking_uri: str, run_id: str, count: int, eval_period: int,
                 axis: StepAxis | None = None) -> None:
        self._axis = axis or StepAxis()
        self._tracking_uri = tracking_uri
        self._run_id = run_id
        self._count = count
        self._period = eval_period
        self._sample: list[dict[str, Any]] | None = None

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if self._period > 0 and done % self._period == 0 and done != self.trainer.max_iter:
            self._safely_visualize(self._axis.done(done - 1))

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._safely_visualize(self._axis.done(self.trainer.max_iter - 1))

    def _safely_visualize(self, step: int) -> None:
        if self._count <= 0 or not self.trainer.cfg.DATASETS.TEST:
            return
        try:
            self._visualize(step)
        except Exception:  # noqa: BLE001 - pictures are never worth a failed training
            logger.exception("logging validation images at iteration %d failed; training "
                             "continues", step)

    def _images(self) -> list[dict[str, Any]]:
        """The fixed sample: the first ``count`` records of the test set, read once."""
        if self._sample is None:
            dataset = self.trainer.cfg.DATASETS.TEST[0]
            self._sample = list(DatasetCatalog.get(dataset)[: self._count])
        return self._sample

    def _visualize(self, step: int) -> None:
        from mlflow.tracking import MlflowClient

        from orchestrator.inference.draw import draw_records
        from orchestrator.inference.predictor import predict_records, read_rgb

        cfg = self.trainer.cfg
        names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", [])
        model = getattr(self.trainer.model, "module", self.trainer.model)  # unwrap DDP
        client = MlflowClient(tracking_uri=self._tracking_uri)
        training = model.training
        model.eval()
        try:
            for record in self._images():
                rgb = read_rgb(record["file_name"])
                drawn = draw_records(rgb, predict_records(model, cfg, rgb), names,
                                     min_score=DISPLAY_SCORE)
                client.log_image(self._run_id, drawn, key=image_key(record["file_name"]),
                                 step=step, synchronous=True)
        finally:
            model.train(training)
        logger.info("logged %d validation images at iteration %d", len(self._images()), step)
