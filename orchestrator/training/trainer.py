"""The ``DefaultTrainer`` every worker runs; extra behaviour arrives as hooks and writers.

Overrides only detectron2's documented extension points (``build_evaluator``,
``build_writers``, ``build_hooks``), never ``train()``. Evaluation is failure-safe: an error in
a periodic or the final evaluation is logged and reported, and training goes on without those
metrics (the checkpoints are unaffected). Each evaluation reports its progress (images done,
ETA, scoring) to ``on_eval_progress`` and logs what it cost as ``eval/seconds`` (all of it)
and ``eval/scoring_seconds`` (rank 0's scoring). Results reach MLflow through detectron2's
``EvalHook`` (``task/metric``: ``bbox/AP``, ``segm/AP``, and on panoptic datasets
``panoptic_seg/PQ``... and ``sem_seg/mIoU``) and the ``MLflowWriter``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils.events import CommonMetricPrinter, EventWriter, JSONWriter

from orchestrator.data.cache import cached_train_dataset
from orchestrator.evaluation import (
    DEFAULT_CHUNK_BYTES,
    ChunkedCOCOEvaluator,
    EvalProgress,
    PanopticEvaluator,
    is_panoptic,
)
from orchestrator.evaluation.progress import ProgressReport
from orchestrator.models.arch import arch_for_cfg
from orchestrator.training.dist import ddp_for_device

__all__ = ["Trainer", "EvalErrorCallback", "mlflow_eval_error_recorder"]

logger = logging.getLogger(__name__)

EvalErrorCallback = Callable[[Exception, str], None]
"""Called with the error and its formatted traceback when an evaluation fails."""


def mlflow_eval_error_recorder(tracking_uri: str, run_id: str) -> EvalErrorCallback:
    """An ``on_eval_error`` that marks the MLflow run: tag ``eval_status=failed`` and the
    traceback as the artifact ``evaluation_error.txt`` (the latest failure wins)."""

    def record(error: Exception, text: str) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        client.set_tag(run_id, "eval_status", "failed")
        client.log_text(run_id, text, "evaluation_error.txt")

    return record


def _combines(cfg: CfgNode) -> bool:
    """Whether the model returns ``panoptic_seg`` (contract section 3)."""
    combine = cfg.MODEL.get("PANOPTIC_FPN", {}).get("COMBINE", {})
    return bool(combine.get("ENABLED", False))


class _EvaluatorsWithProgress(DatasetEvaluators):
    """detectron2's ``DatasetEvaluators`` (results of all members in one dict), showing the
    progress of its COCO member: ``_evaluate`` forwards that to the driver."""

    def __init__(self, coco: ChunkedCOCOEvaluator, *others: DatasetEvaluator) -> None:
        super().__init__([coco, *others])
        self.progress = coco.progress


class Trainer(DefaultTrainer):
    """detectron2's trainer with OOM-safe COCO evaluation that cannot stop training, our
    writers and a configurable log period.

    Args:
        cfg: the frozen worker cfg (``orchestrator.training.config.build_cfg``).
        extra_writers: event writers for the main process (MLflow, progress).
        log_period: iterations between writer calls.
        on_eval_error: called when an evaluation raises, after it is logged (e.g.
            ``mlflow_eval_error_recorder``); training continues either way.
        periodic_checkpoints: keep detectron2's ``PeriodicCheckpointer``; a Ray worker turns
            it off because its ``RayCheckpointHook`` already saves every period.
        on_eval_progress: gets each evaluation's progress (``EvalProgress`` status dicts).
    """

    def __init__(self, cfg: CfgNode, *, extra_writers: Sequence[EventWriter] = (),
                 log_period: int = 20, on_eval_error: EvalErrorCallback | None = None,
                 periodic_checkpoints: bool = True,
                 on_eval_progress: ProgressReport | None = None) -> None:
        self._on_eval_progress = on_eval_progress
        self._extra_writers = list(extra_writers)
        self._log_period = log_period
        self._periodic_checkpoints = periodic_checkpoints
        self._on_eval_error = on_eval_error
        with ddp_for_device():
            super().__init__(cfg)

    def state_dict(self) -> dict[str, Any]:
        """detectron2 0.6 leaves the optimizer out of checkpoints (momentum is lost on
        resume); include the inner trainer's state, as later detectron2 releases do."""
        state: dict[str, Any] = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:  # checkpoints written by plain detectron2 0.6 lack it
            self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> DatasetEvaluator:
        """COCO box/mask AP; for a panoptic dataset of a model that combines its outputs
        (``MODEL.PANOPTIC_FPN.COMBINE.ENABLED``) also PQ and mIoU (``PanopticEvaluator``)."""
        # pycocotools, not the C++ fast evaluator (it needs detectron2._C): same numbers.
        output = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        ours = cfg.get("ORCHESTRATOR", {})  # absent from cfgs not made by build_cfg
        coco = ChunkedCOCOEvaluator(
            dataset_name, output_dir=output,
            chunk_bytes=ours.get("EVAL_CHUNK_BYTES", DEFAULT_CHUNK_BYTES),
            cpu_fallback=ours.get("EVAL_CPU_FALLBACK", True),
        )
        if not (is_panoptic(dataset_name) and _combines(cfg)):
            return coco
        # No output_dir: a PNG per image at every periodic evaluation costs time and disk,
        # and nothing reads them (predict exports panoptic results on demand).
        return _EvaluatorsWithProgress(coco, PanopticEvaluator(dataset_name))

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        """detectron2's loader, with the arch's mapper and the dataset from the node's cache
        (parsed once per node, shared by its workers; ``orchestrator.data.cache``)."""
        arch = arch_for_cfg(cfg)
        mapper = arch.train_mapper(cfg) if arch and arch.train_mapper else None
        dataset = cached_train_dataset(cfg)
        if mapper is None and dataset is None:
            return super().build_train_loader(cfg)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

    def build_writers(self) -> list[EventWriter]:
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            *self._extra_writers,
        ]

    def build_hooks(self) -> list[hooks.HookBase]:
        return [self._adapt(h) for h in super().build_hooks()
                if self._periodic_checkpoints or not isinstance(h, hooks.PeriodicCheckpointer)]

    def _adapt(self, hook: hooks.HookBase) -> hooks.HookBase:
        # detectron2 hard-codes a writer period of 20; re-wrap the writers it built (once).
        if isinstance(hook, hooks.PeriodicWriter):
            return hooks.PeriodicWriter(hook._writers, period=self._log_period)
        if isinstance(hook, hooks.EvalHook):
            return hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._failure_safe(self._evaluate))
        return hook

    def _evaluate(self) -> Any:
        """detectron2's ``test_and_save_results`` with evaluators that report progress, timed.

        ``_last_eval_results`` is where detectron2's ``train()`` (``TEST.EXPECTED_RESULTS``)
        and ``ArtifactHook`` look for the latest results.
        """
        start = time.perf_counter()
        evaluators = [self.build_evaluator(self.cfg, name) for name in self.cfg.DATASETS.TEST]
        progress = [e.progress for e in evaluators
                    if isinstance(getattr(e, "progress", None), EvalProgress)]
        for tracker in progress:
            tracker.report = self._on_eval_progress
        self._last_eval_results = self.test(self.cfg, self.model, evaluators)
        if evaluators:  # no test set, nothing to time
            self.storage.put_scalar("eval/seconds", time.perf_counter() - start,
                                    smoothing_hint=False)
        scored = [t.scoring_seconds for t in progress if t.scoring_seconds is not None]
        if scored:  # rank 0
            self.storage.put_scalar("eval/scoring_seconds", sum(scored), smoothing_hint=False)
        return self._last_eval_results

    def _failure_safe(self, evaluate: Callable[[], Any]) -> Callable[[], Any]:
        """``evaluate`` that returns no metrics instead of raising, so training goes on.

        With several workers this covers errors all ranks share and rank 0's own (COCO
        evaluation runs there after the gather); a rank failing alone before the gather
        leaves the others waiting in it, as any collective would.
        """

        @functools.wraps(evaluate)
        def safe() -> Any:
            training = self.model.training
            try:
                return evaluate()
            except Exception as error:  # noqa: BLE001 - any evaluation failure is survivable
                # detectron2's inference_context restores train mode only on success.
                self.model.train(training)
                self._report_eval_error(error, traceback.format_exc())
                return {}

        return safe

    def _report_eval_error(self, error: Exception, text: str) -> None:
        logger.error("evaluation at iteration %d failed; training continues without its "
                     "metrics:\n%s", self.iter, text)
        if self._on_eval_error is None:
            return
        try:
            self._on_eval_error(error, text)
        except Exception:  # noqa: BLE001 - reporting must not kill training either
            logger.exception("on_eval_error callback failed")
