"""The function every Ray Train worker runs: detectron2 set up, trained and tracked."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from orchestrator.data.register import register_datasets
from orchestrator.job import WorkerJob
from orchestrator.secrets import redact_urls
from orchestrator.tracking.steps import StepAxis
from orchestrator.tracking.writer import BackgroundSender, MLflowWriter, SystemMetricsWriter
from orchestrator.training.config import build_cfg
from orchestrator.training.dist import setup_local_process_group
from orchestrator.training.elastic import log_plan, plan_for_world
from orchestrator.training.hang import Member, group_members
from orchestrator.training.hang_watch import HangWatch, WatchContext
from orchestrator.training.hooks import (
    ArtifactHook,
    ProgressWriter,
    RayCheckpointHook,
    restore_from_ray,
)
from orchestrator.training.preemption import PreemptionHook, preemption_recorder
from orchestrator.training.startup import StartupClock
from orchestrator.training.trainer import Trainer, mlflow_eval_error_recorder
from orchestrator.training.visualize import VisualizeHook

__all__ = ["train_loop_per_worker"]

logger = logging.getLogger("orchestrator.worker")


def _device() -> str:
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        return f"cuda:{device.index}"
    return "cpu"


class _RedactUrls(logging.Filter):
    """Log files and config.yaml are run artifacts: a weights URL's credentials stay out."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message:
            record.msg, record.args = redact_urls(message), ()
        return True


def _prepare_output(cfg: CfgNode) -> None:
    """What detectron2's ``default_setup`` does that we want: logs and config.yaml."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    rank = comm.get_rank()
    for name in ("fvcore", "orchestrator", "detectron2"):
        for handler in setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name=name).handlers:
            handler.addFilter(_RedactUrls())
    if comm.is_main_process():
        Path(cfg.OUTPUT_DIR, "config.yaml").write_text(redact_urls(cfg.dump()),
                                                       encoding="utf-8")


def _step_axis(job: WorkerJob) -> StepAxis:
    """MLflow steps at the spec's reference batch, from the batch of the plan in force."""
    return StepAxis(batch=job.plan.total_batch, reference_batch=job.plan.reference_batch)


def _writers(job: WorkerJob, queue: Any, sender: BackgroundSender) -> list[Any]:
    """Rank 0's tracking writers, all sending from one background thread (order kept), at
    steps of the spec's reference batch (the plan in force knows the batch)."""
    uri, run_id = job.tracking_uri, job.run_id
    axis = _step_axis(job)
    writers: list[Any] = [
        MLflowWriter(tracking_uri=uri, run_id=run_id, axis=axis, sender=sender),
        SystemMetricsWriter(tracking_uri=uri, run_id=run_id, axis=axis, sender=sender)]
    if queue is not None:
        writers.append(ProgressWriter(queue, job.plan.max_iter, sender))
    return writers


def train_loop_per_worker(config: dict[str, Any], *, entered: float | None = None) -> None:
    """Ray Train entry point: ``config`` is ``WorkerJob.to_config()`` plus a progress queue;
    ``entered``: when Ray called the entry point (before detectron2 was imported)."""
    clock = StartupClock(entered)
    clock.mark("imports")
    context = ray.train.get_context()
    job = plan_for_world(WorkerJob.from_config(config), context.get_world_size())
    node = ray.get_runtime_context().get_node_id()
    setup_local_process_group(node)
    members = group_members(node)
    clock.mark("process groups")
    register_datasets(job.data)
    cfg = build_cfg(job, _device())
    _prepare_output(cfg)
    clock.mark("cfg")
    main = comm.is_main_process()
    sender = BackgroundSender(name="tracking-sender")
    try:
        watch = _hang_watch(job, cfg, config, members, node)
        _train(job, cfg, config.get("progress_queue") if main else None, sender, clock, watch)
    finally:  # writers flush in after_train; this also covers a failure before training
        sender.close()


def _hang_watch(job: WorkerJob, cfg: CfgNode, config: dict[str, Any], members: list[Member],
                node: str) -> HangWatch | None:
    """Every rank's watch for a stalled group; none for one worker (no collective to hang)
    or without the driver's board."""
    board = config.get("hang_board")
    if board is None or len(members) < 2:
        return None
    return HangWatch(WatchContext(board=board, members=members, node=node,
                                  timeout_s=job.spec.run.collective_timeout_s,
                                  tracking_uri=job.tracking_uri, run_id=job.run_id,
                                  output_dir=cfg.OUTPUT_DIR, queue=config.get("progress_queue")))


def _train(job: WorkerJob, cfg: CfgNode, queue: Any, sender: BackgroundSender,
           clock: StartupClock, watch: HangWatch | None = None) -> None:
    main = comm.is_main_process()
    writers = _writers(job, queue, sender) if main else []
    progress = next((w for w in writers if isinstance(w, ProgressWriter)), None)
    trainer = Trainer(
        cfg,
        extra_writers=writers,
        log_period=job.spec.tracking.log_period,
        periodic_checkpoints=False,  # RayCheckpointHook writes each checkpoint, once
        on_eval_error=mlflow_eval_error_recorder(job.tracking_uri, job.run_id) if main else None,
        on_eval_progress=progress.write_eval if progress is not None else None,
    )
    hooks: list[Any] = [watch] if watch is not None else []  # first: its after_train too
    checkpoints = RayCheckpointHook(cfg.SOLVER.CHECKPOINT_PERIOD, output_dir=cfg.OUTPUT_DIR,
                                    before_report=_metrics_flush(writers))
    hooks += [checkpoints, _preemption_hook(job, checkpoints, writers)]
    if main:
        hooks.append(ArtifactHook(tracking_uri=job.tracking_uri, run_id=job.run_id,
                                  output_dir=cfg.OUTPUT_DIR))
        hooks.append(VisualizeHook(tracking_uri=job.tracking_uri, run_id=job.run_id,
                                   count=cfg.ORCHESTRATOR.VISUALIZE,
                                   eval_period=cfg.TEST.EVAL_PERIOD,
                                   axis=_step_axis(job)))
    trainer.register_hooks(hooks)
    clock.mark("model and data")
    trainer.resume_or_load(resume=False)
    restored = restore_from_ray(trainer)
    clock.mark("weights")
    if restored and trainer.start_iter >= trainer.max_iter:
        # A finished run resumed: training again would only repeat the final evaluation.
        logger.info("checkpoint is at the last iteration: nothing left to train")
        return
    _log_start(job, cfg)
    clock.log()
    if main:  # on the sender thread: opening MLflow must not delay the first iteration
        start_iter = trainer.start_iter
        sender.put(lambda: log_plan(job, start_iter))
    _profiled(trainer.train)


def _metrics_flush(writers: list[Any], *, release_held: bool = False) -> Callable[[], None] | None:
    """Rank 0's MLflow writers sent out now (None on other ranks): they send every few
    seconds, and a group Ray kills (a resize, a lost node, a preemption) never gets to flush.
    Before a checkpoint report the values still held stay held (the next iteration can land
    on their step); ``release_held`` sends them too, when training goes no further."""
    mlflow_writers = [w for w in writers if isinstance(w, MLflowWriter)]
    if not mlflow_writers:
        return None

    def flush() -> None:
        for writer in mlflow_writers:
            if release_held:
                writer.close()  # the sender is shared: it keeps running
            else:
                writer.flush()

    return flush


def _preemption_hook(job: WorkerJob, checkpoints: RayCheckpointHook,
                     writers: list[Any]) -> PreemptionHook:
    """On in every run: a preemption or a SIGTERM can reach any worker of any launcher.
    Rank 0 (the one with ``writers``) records it and sends every metric it holds before
    waiting for the reclaim."""
    record = preemption_recorder(job.tracking_uri, job.run_id) if writers else None
    return PreemptionHook(checkpoints, every=job.spec.run.preemption_check_every,
                          record=record, flush=_metrics_flush(writers, release_held=True))


def _profiled(train: Any) -> None:
    """``ORCHESTRATOR_PROFILE_DIR`` (e.g. through ``run.env``): each rank writes a cProfile of
    its training thread there, ``train-rank<N>.prof``, to find where an iteration's time goes."""
    folder = os.environ.get("ORCHESTRATOR_PROFILE_DIR")
    if not folder:
        train()
        return
    import cProfile

    profile = cProfile.Profile()
    profile.enable()
    try:
        train()
    finally:
        profile.disable()
        os.makedirs(folder, exist_ok=True)
        profile.dump_stats(os.path.join(folder, f"train-rank{comm.get_rank()}.prof"))


def _log_start(job: WorkerJob, cfg: CfgNode) -> None:
    logger.info("rank %d/%d (pid %d) starts training: %d iterations; node %s, local rank "
                "%d/%d", comm.get_rank(), comm.get_world_size(), os.getpid(),
                cfg.SOLVER.MAX_ITER, ray.get_runtime_context().get_node_id(),
                comm.get_local_rank(), comm.get_local_size())
    for key in sorted([*job.spec.run.env, *job.spec.run.env_from]):  # never the values
        logger.info("run.env %s %s", key, "is set" if key in os.environ else "is NOT set")
