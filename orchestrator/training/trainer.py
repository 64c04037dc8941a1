"""The ``DefaultTrainer`` every worker runs; extra behaviour arrives as hooks and writers.

Overrides only detectron2's documented extension points (``build_evaluator``,
``build_writers``, ``build_hooks``), never ``train()``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.events import CommonMetricPrinter, EventWriter, JSONWriter

from orchestrator.models.arch import arch_for_cfg
from orchestrator.training.dist import ddp_for_device

__all__ = ["Trainer"]


class Trainer(DefaultTrainer):
    """detectron2's trainer with COCO evaluation, our writers and a configurable log period.

    Args:
        cfg: the frozen worker cfg (``orchestrator.training.config.build_cfg``).
        extra_writers: event writers for the main process (MLflow, progress).
        log_period: iterations between writer calls.
    """

    def __init__(self, cfg: CfgNode, *, extra_writers: Sequence[EventWriter] = (),
                 log_period: int = 20) -> None:
        self._extra_writers = list(extra_writers)
        self._log_period = log_period
        with ddp_for_device():
            super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> COCOEvaluator:
        # The C++ fast evaluator needs detectron2._C; pycocotools gives the same numbers.
        output = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output, use_fast_impl=False)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        arch = arch_for_cfg(cfg)
        if arch is None or arch.train_mapper is None:
            return super().build_train_loader(cfg)
        return build_detection_train_loader(cfg, mapper=arch.train_mapper(cfg))

    def build_writers(self) -> list[EventWriter]:
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            *self._extra_writers,
        ]

    def build_hooks(self) -> list[hooks.HookBase]:
        # detectron2 hard-codes a writer period of 20; re-wrap the writers it built (once).
        return [
            hooks.PeriodicWriter(h._writers, period=self._log_period)
            if isinstance(h, hooks.PeriodicWriter) else h
            for h in super().build_hooks()
        ]
