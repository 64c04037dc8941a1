"""Cross-cutting worker behaviour as detectron2 hooks and writers: progress and artifacts."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventWriter, get_event_storage

from orchestrator.tracking.writer import BackgroundSender
from orchestrator.training.elastic import adopt_new_schedule, equivalent_iteration

__all__ = [
    "ProgressWriter",
    "ArtifactHook",
    "RayCheckpointHook",
    "progress_record",
    "evaluation_json",
    "restore_from_ray",
    "load_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pth"
STAGING_DIR = "checkpoint-staging"

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
    """Rank 0 pushes a small progress record to the driver's queue. The put (a round trip to
    the queue actor) runs on ``sender``'s thread, never on the training thread."""

    def __init__(self, queue: Any, max_iter: int, sender: BackgroundSender) -> None:
        self._queue = queue
        self._max_iter = max_iter
        self._sender = sender

    def write(self) -> None:
        record = progress_record(get_event_storage(), self._max_iter)
        self._sender.put(lambda: self._push(record))

    def write_eval(self, status: dict[str, Any]) -> None:
        """The training record with an evaluation's progress (``EvalProgress`` status) as
        ``"eval"``: the trainer's ``on_eval_progress``."""
        record = {**progress_record(get_event_storage(), self._max_iter), "eval": status}
        self._sender.put(lambda: self._push(record))

    def _push(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except Exception:  # a full or gone queue must not stop training  # noqa: BLE001
            pass

    def close(self) -> None:
        self._sender.flush()


def _finite(value: Any) -> Any:
    """``value`` with every number a finite float or int, and NaN/inf as None."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if value is None or isinstance(value, str | bool | int):
        return value
    number = float(value)  # numpy and torch scalars too
    return number if math.isfinite(number) else None


def evaluation_json(results: Any) -> str:
    """detectron2's evaluation results as strict JSON: an AP that is NaN (a class without
    ground truth in the test set) is ``null``, since a bare ``NaN`` is not JSON and breaks
    every reader but Python's."""
    return json.dumps(_finite(results), indent=2, allow_nan=False)


def _panoptic(cfg: Any) -> bool:
    """The model trains a panoptic branch (detectron2's default cfg has COMBINE on, so the
    config must also build a semantic head: BlendMask's panoptic configs)."""
    return bool(cfg.MODEL.PANOPTIC_FPN.COMBINE.ENABLED) and \
        cfg.MODEL.META_ARCHITECTURE in ("BlendMask", "PanopticFPN")


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
        detections without the dataset (detectron2 fills ``thing_classes`` on loading it).
        A panoptic run adds ``stuff_classes.json``: the stuff names, semantic ids 1..S."""
        from detectron2.data import MetadataCatalog

        # loading.py imports this module: its names are imported here, not at the top
        from orchestrator.inference.loading import CLASSES_ARTIFACT, STUFF_CLASSES_ARTIFACT

        datasets = self.trainer.cfg.DATASETS.TRAIN
        metadata = MetadataCatalog.get(datasets[0]) if datasets else None
        names = metadata.get("thing_classes") if metadata else None
        if names:
            self._log_json(client, CLASSES_ARTIFACT, list(names))
        if metadata and metadata.get("panoptic_json") and _panoptic(self.trainer.cfg):
            self._log_json(client, STUFF_CLASSES_ARTIFACT, list(metadata.stuff_classes[1:]))

    def _log_json(self, client: Any, name: str, value: Any) -> None:
        path = self._output / name
        path.write_text(json.dumps(value), encoding="utf-8")
        self._log(client, path)

    def after_train(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self._tracking_uri)
        self._log_classes(client)
        results = getattr(self.trainer, "_last_eval_results", None)
        if results:
            path = self._output / "evaluation.json"
            path.write_text(evaluation_json(results), encoding="utf-8")
            self._log(client, path)
        for name in ("config.yaml", "metrics.json"):
            self._log(client, self._output / name)
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._log(client, self._output / "model_final.pth", "checkpoints")


class RayCheckpointHook(HookBase):
    """Every checkpoint period and after the last iteration, every rank calls
    ``ray.train.report`` (it is a barrier); rank 0 attaches a checkpoint of the model and the
    trainer state (iteration, scheduler, optimizer), so Ray can restart the group from it.

    This is the only checkpoint writer of a worker (the trainer's own ``PeriodicCheckpointer``
    is left out): rank 0 saves once into a staging folder beside the output, and Ray copies it
    to ``run.storage_path`` on its upload thread (``CheckpointUploadMode.ASYNC``) and deletes
    the staged copy, so training waits only for the local save. The last checkpoint is also
    hard-linked as ``model_final.pth`` in the output folder (no second write).
    ``before_report``: rank 0's call that stores the metrics trained so far (MLflow writers'
    ``flush``), made before Ray may resume anything from the checkpoint.
    """

    def __init__(self, period: int, *, output_dir: str | None = None,
                 before_report: Callable[[], None] | None = None) -> None:
        self._period = period
        self._output = Path(output_dir) if output_dir else None
        self._before_report = before_report
        self.blocked_s: list[float] = []  # rank 0: seconds training waited per checkpoint
        self.saved_iter: int | None = None  # the iteration of the last checkpoint reported

    def before_train(self) -> None:
        if self._output is not None and comm.is_main_process():
            # Left by a killed attempt: their uploads died with it.
            shutil.rmtree(self._output / STAGING_DIR, ignore_errors=True)

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if done % self._period == 0 or done >= self.trainer.max_iter:
            self._report(self.trainer.iter, final=done >= self.trainer.max_iter)

    def save_now(self, *, wait_upload: bool = False) -> int:
        """A checkpoint of the iteration just finished, out of period (a preemption notice,
        a SIGTERM), through the same save and report as the periodic ones, so a restart
        resumes from it exactly. Every rank must call it (``ray.train.report`` is a barrier).
        ``wait_upload``: return only once it is in ``run.storage_path`` (the worker is about
        to exit). Returns the iteration saved; one saved already is not saved again."""
        if self.saved_iter != self.trainer.iter:
            self._report(self.trainer.iter, final=False, wait_upload=wait_upload)
        return self.trainer.iter

    def after_train(self) -> None:
        if self._output is not None and comm.is_main_process():
            with contextlib.suppress(OSError):  # still uploading: Ray empties it soon
                (self._output / STAGING_DIR).rmdir()

    def _report(self, iteration: int, *, final: bool, wait_upload: bool = False) -> None:
        import ray.train

        metrics = {"iteration": iteration}
        self.saved_iter = iteration
        if not comm.is_main_process():
            ray.train.report(metrics)
            return
        start = time.perf_counter()
        staging = (self._output or Path(tempfile.gettempdir())) / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"iter_{iteration:07d}-", dir=staging))
        saver = DetectionCheckpointer(self.trainer.model, str(folder), trainer=self.trainer)
        # The batch it was trained at lets an elastic restart map the iteration.
        saver.save(CHECKPOINT_FILE.removesuffix(".pth"),
                   total_batch=self.trainer.cfg.SOLVER.IMS_PER_BATCH)
        if final and self._output is not None:
            _link_or_copy(folder / CHECKPOINT_FILE, self._output / "model_final.pth")
        saved = time.perf_counter()
        if self._before_report is not None:
            self._before_report()
        mode = ray.train.CheckpointUploadMode
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_dir_name=f"iter_{iteration:07d}",
                         checkpoint_upload_mode=mode.SYNC if wait_upload else mode.ASYNC,
                         delete_local_checkpoint_after_upload=True)
        self.blocked_s.append(time.perf_counter() - start)
        # The split says whether a slow checkpoint is the disk (save) or the ranks' barrier.
        logger.info("checkpoint at iteration %d: training blocked %.3f s (save %.3f s, metrics "
                    "and report %.3f s; upload continues in the background)", iteration,
                    self.blocked_s[-1], saved - start, self.blocked_s[-1] - (saved - start))


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(source, target)


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
