"""Cross-cutting worker behaviour as detectron2 hooks and writers: progress and artifacts."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventWriter, get_event_storage

from orchestrator.training.elastic import adopt_new_schedule, equivalent_iteration

__all__ = [
    "ProgressWriter",
    "ArtifactHook",
    "RayCheckpointHook",
    "progress_record",
    "restore_from_ray",
    "load_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pth"

_SHOWN_LOSSES = ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_fcos_cls",
                 "loss_fcos_loc", "loss_fcos_ctr", "loss_basis_sem")


def progress_record(storage: Any, max_iter: int) -> dict[str, Any]:
    """Iteration, ETA and the main losses, as the driver's progress display wants them."""
    latest = storage.latest()
    losses = {k: float(latest[k][0]) for k in _SHOWN_LOSSES if k in latest}
    done = min(storage.iter + 1, max_iter)  # after training, storage.iter == max_iter
    eta = None
    if "time" in storage.histories():
        eta = storage.history("time").median(100) * (max_iter - done)
    return {"iter": done, "max_iter": max_iter, "eta_s": eta, "losses": losses,
            "time": time.time()}


class ProgressWriter(EventWriter):
    """Rank 0 pushes a small progress record to the driver's queue (never blocks training)."""

    def __init__(self, queue: Any, max_iter: int) -> None:
        self._queue = queue
        self._max_iter = max_iter

    def write(self) -> None:
        record = progress_record(get_event_storage(), self._max_iter)
        try:
            self._queue.put_nowait(record)
        except Exception:  # a full or gone queue must not stop training  # noqa: BLE001
            pass


class ArtifactHook(HookBase):
    """After training, rank 0 sends config, class names, metrics, evaluation results and the
    final checkpoint to the MLflow run."""

    def __init__(self, *, tracking_uri: str, run_id: str, output_dir: str) -> None:
        self._tracking_uri = tracking_uri
        self._run_id = run_id
        self._output = Path(output_dir)

    def _log(self, client: Any, path: Path, artifact_path: str | None = None) -> None:
        if path.is_file():
            client.log_artifact(self._run_id, str(path), artifact_path)

    def _log_classes(self, client: Any) -> None:
        """``classes.json``: the class names by model class index, so ``predict`` can label
        detections without the dataset (detectron2 fills ``thing_classes`` on loading it)."""
        from detectron2.data import MetadataCatalog

        datasets = self.trainer.cfg.DATASETS.TRAIN
        names = MetadataCatalog.get(datasets[0]).get("thing_classes") if datasets else None
        if names:
            path = self._output / "classes.json"
            path.write_text(json.dumps(list(names)), encoding="utf-8")
            self._log(client, path)

    def after_train(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self._tracking_uri)
        self._log_classes(client)
        results = getattr(self.trainer, "_last_eval_results", None)
        if results:
            path = self._output / "evaluation.json"
            path.write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
            self._log(client, path)
        for name in ("config.yaml", "metrics.json"):
            self._log(client, self._output / name)
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._log(client, self._output / "model_final.pth", "checkpoints")


class RayCheckpointHook(HookBase):
    """Every checkpoint period and after the last iteration, every rank calls
    ``ray.train.report`` (it is a barrier); rank 0 attaches a checkpoint of the model and the
    trainer state (iteration, scheduler, optimizer), so Ray can restart the group from it."""

    def __init__(self, period: int) -> None:
        self._period = period

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if done % self._period == 0 or done >= self.trainer.max_iter:
            self._report(self.trainer.iter)

    def _report(self, iteration: int) -> None:
        import ray.train

        metrics = {"iteration": iteration}
        if not comm.is_main_process():
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="d2ckpt-") as tmp:
            saver = DetectionCheckpointer(self.trainer.model, tmp, trainer=self.trainer)
            # The batch it was trained at lets an elastic restart map the iteration.
            saver.save(CHECKPOINT_FILE.removesuffix(".pth"),
                       total_batch=self.trainer.cfg.SOLVER.IMS_PER_BATCH)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"iter_{iteration:07d}")


def restore_from_ray(trainer: Any) -> bool:
    """Continue from Ray Train's latest checkpoint, if this attempt is a restart (or a
    resumed run). Every rank loads it. Returns whether a checkpoint was loaded."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        load_checkpoint(trainer, Path(folder) / CHECKPOINT_FILE)
    return True


def load_checkpoint(trainer: Any, path: Path) -> None:
    """Load a checkpoint written by ``RayCheckpointHook`` (all ranks) and continue after it;
    one written at another total batch continues at the same number of images seen."""
    batch = trainer.cfg.SOLVER.IMS_PER_BATCH
    new_lrs = [group["initial_lr"] for group in trainer.optimizer.param_groups]
    extra = trainer.checkpointer.load(str(path))
    trainer.start_iter = trainer.iter + 1
    logger.info("restored from Ray checkpoint at iteration %d", trainer.iter)
    old_batch = int(extra.get("total_batch", batch))
    if old_batch != batch:
        iteration = equivalent_iteration(trainer.iter, old_batch, batch)
        adopt_new_schedule(trainer, new_lrs, iteration)
        logger.warning("checkpoint was written at batch %d, training goes on at batch %d "
                       "from iteration %d", old_batch, batch, iteration)
