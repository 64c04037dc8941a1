"""The function every Ray Train worker runs: detectron2 set up, trained and tracked."""

from __future__ import annotations

import logging
import os
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
from orchestrator.tracking.writer import MLflowWriter
from orchestrator.training.config import build_cfg
from orchestrator.training.dist import setup_local_process_group
from orchestrator.training.hooks import ArtifactHook, ProgressWriter
from orchestrator.training.trainer import Trainer

__all__ = ["train_loop_per_worker"]

logger = logging.getLogger("orchestrator.worker")


def _device() -> str:
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        return f"cuda:{device.index}"
    return "cpu"


def _prepare_output(cfg: CfgNode) -> None:
    """What detectron2's ``default_setup`` does that we want: logs and config.yaml."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    rank = comm.get_rank()
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="fvcore")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank)
    if comm.is_main_process():
        Path(cfg.OUTPUT_DIR, "config.yaml").write_text(cfg.dump(), encoding="utf-8")


def _writers(job: WorkerJob, queue: Any) -> list[Any]:
    writers: list[Any] = [MLflowWriter(tracking_uri=job.tracking_uri, run_id=job.run_id)]
    if queue is not None:
        writers.append(ProgressWriter(queue, job.plan.max_iter))
    return writers


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: ``config`` is ``WorkerJob.to_config()`` plus a progress queue."""
    job = WorkerJob.from_config(config)
    context = ray.train.get_context()
    setup_local_process_group(context.get_node_rank())
    register_datasets(job.data)
    cfg = build_cfg(job, _device())
    _prepare_output(cfg)
    main = comm.is_main_process()
    trainer = Trainer(
        cfg,
        extra_writers=_writers(job, config.get("progress_queue")) if main else (),
        log_period=job.spec.tracking.log_period,
    )
    if main:
        trainer.register_hooks([ArtifactHook(tracking_uri=job.tracking_uri, run_id=job.run_id,
                                             output_dir=cfg.OUTPUT_DIR)])
    trainer.resume_or_load(resume=False)
    logger.info("rank %d/%d starts training: %d iterations", comm.get_rank(),
                comm.get_world_size(), cfg.SOLVER.MAX_ITER)
    trainer.train()
