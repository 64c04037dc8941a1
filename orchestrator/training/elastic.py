"""Elastic training: when Ray restarts the worker group at another size, the plan follows.

The batch, LR and schedule are recomputed for the new world size, and a checkpoint written at
the old batch resumes at the same point in the data (images seen), with the LR schedule of the
new plan rather than the one stored in the checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from orchestrator.job import WorkerJob
from orchestrator.plan import replan
from orchestrator.tracking.steps import StepAxis

__all__ = ["plan_for_world", "equivalent_iteration", "adopt_new_schedule", "log_plan"]

logger = logging.getLogger(__name__)


def plan_for_world(job: WorkerJob, world_size: int) -> WorkerJob:
    """``job`` with its plan recomputed if the group runs at a size the plan was not made for."""
    if world_size == job.plan.workers:
        return job
    plan = replan(job.spec, world_size, job.data.usable_images)
    logger.warning("running with %d workers instead of %d: plan recomputed (batch %d -> %d, "
                   "LR %g -> %g, %d -> %d iterations)", world_size, job.plan.workers,
                   job.plan.total_batch, plan.total_batch, job.plan.base_lr, plan.base_lr,
                   job.plan.max_iter, plan.max_iter)
    return replace(job, plan=plan)


def equivalent_iteration(iteration: int, old_batch: int, new_batch: int) -> int:
    """The last iteration at ``new_batch`` that has seen as many images as ``iteration`` (the
    last one finished) did at ``old_batch``."""
    return max(0, round((iteration + 1) * old_batch / new_batch) - 1)


def adopt_new_schedule(trainer: Any, new_lrs: list[float], iteration: int) -> None:
    """After loading an old-batch checkpoint: continue at ``iteration`` with the new plan's
    base LRs (the checkpoint's scheduler and optimizer state carry the old ones)."""
    trainer.iter = iteration
    trainer.start_iter = iteration + 1
    scheduler = trainer.scheduler
    scheduler.base_lrs = list(new_lrs)
    scheduler.last_epoch = iteration
    groups = trainer.optimizer.param_groups
    for group, base, lr in zip(groups, new_lrs, scheduler.get_lr(), strict=True):
        group["initial_lr"] = base
        group["lr"] = lr


def log_plan(job: WorkerJob, iteration: int) -> None:
    """The plan each attempt trains with, as ``plan/*`` metrics at the step (reference
    iterations, as every metric) of its first ``iteration``: a plan that changes after an
    elastic restart shows as a step in these curves, where the losses' batch changed."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    plan, now = job.plan, int(time.time() * 1000)
    step = StepAxis(batch=plan.total_batch, reference_batch=plan.reference_batch).step(iteration)
    values = {"workers": plan.workers, "total_batch": plan.total_batch,
              "base_lr": plan.base_lr, "max_iter": plan.max_iter}
    logger.info("plan from iteration %d (step %d): %s", iteration, step,
                ", ".join(f"{k} {v:g}" for k, v in values.items()))
    metrics = [Metric(f"plan/{k}", float(v), now, step) for k, v in values.items()]
    MlflowClient(tracking_uri=job.tracking_uri).log_batch(job.run_id, metrics=metrics)
