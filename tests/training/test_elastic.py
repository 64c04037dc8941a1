"""Elastic restarts: the plan follows the world size and checkpoints map across batch sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from detectron2.checkpoint import DetectionCheckpointer

from orchestrator.errors import InputError
from orchestrator.job import WorkerJob
from orchestrator.launch.prepared import prepare
from orchestrator.plan import make_plan
from orchestrator.spec import parse_spec
from orchestrator.training.elastic import equivalent_iteration, log_plan, plan_for_world
from tests.conftest import TINY_JOB


@pytest.mark.parametrize(("iteration", "old", "new", "expected"), [
    (99, 16, 8, 199),   # half the batch: twice the iterations for the same images
    (99, 16, 32, 49),
    (9, 4, 8, 4),
    (0, 2, 16, 0),      # never before the start
])
def test_equivalent_iteration_keeps_images_seen(iteration: int, old: int, new: int,
                                                expected: int) -> None:
    assert equivalent_iteration(iteration, old, new) == expected


def test_a_worker_range_plans_for_the_maximum() -> None:
    spec = parse_spec(yaml.safe_load(TINY_JOB), overrides=["resources.workers=[1, 4]"])
    assert (spec.resources.min_workers, spec.resources.max_workers) == (1, 4)
    assert make_plan(spec).workers == 4 and make_plan(spec).total_batch == 4
    with pytest.raises(InputError, match=r"must be \[min, max\]"):
        parse_spec(yaml.safe_load(TINY_JOB), overrides=["resources.workers=[4, 1]"])


def _job(workdir: Path, workers: int) -> WorkerJob:
    spec = parse_spec(yaml.safe_load(TINY_JOB),
                      overrides=[f"resources.workers=[1, {workers}]", "solver.max_iter=8",
                                 "solver.reference_batch=4", "solver.warmup_iters=0"])
    prepared = prepare(spec, workdir=workdir)
    return WorkerJob(spec=prepared.spec, plan=prepared.plan, data=prepared.data,
                     config_file=str(prepared.config_file), output_dir=str(workdir / "out"),
                     run_id="", tracking_uri="")


def test_plan_for_world_recomputes_batch_lr_and_schedule(workdir: Path) -> None:
    job = _job(workdir, 4)
    assert plan_for_world(job, 4) is job
    smaller = plan_for_world(job, 2)
    assert (smaller.plan.workers, smaller.plan.total_batch) == (2, 2)
    assert smaller.plan.base_lr == pytest.approx(job.plan.base_lr / 2)
    assert smaller.plan.max_iter == 2 * job.plan.max_iter


def test_a_new_plan_is_logged_at_the_reference_step_where_it_starts(workdir: Path) -> None:
    """Batch 2 at reference 4: iteration 10 is the first of step 5 (22 images seen)."""
    from dataclasses import replace

    from mlflow.tracking import MlflowClient

    from orchestrator.tracking.run import RunTracker

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    tracker = RunTracker.create(tracking_uri=uri, experiment="e", run_name="p", tags={})
    job = replace(plan_for_world(_job(workdir, 4), 2), run_id=tracker.run_id, tracking_uri=uri)
    log_plan(job, 10)
    history = MlflowClient(tracking_uri=uri).get_metric_history(tracker.run_id, "plan/workers")
    assert [(m.step, m.value) for m in history] == [(5, 2.0)]
    tracker.finish("FINISHED")


def test_a_checkpoint_from_a_larger_batch_resumes_at_the_same_images(workdir: Path) -> None:
    from orchestrator.data.register import register_datasets
    from orchestrator.training.config import build_cfg
    from orchestrator.training.hooks import load_checkpoint
    from orchestrator.training.trainer import Trainer

    big = _job(workdir, 4)
    register_datasets(big.data)
    (workdir / "out").mkdir()
    first = Trainer(build_cfg(big, "cpu"))
    first.iter = 2  # as if iterations 0-2 ran at batch 4
    DetectionCheckpointer(first.model, str(workdir), trainer=first).save("model", total_batch=4)

    small = plan_for_world(big, 2)
    second = Trainer(build_cfg(small, "cpu"))
    load_checkpoint(second, workdir / "model.pth")
    assert (second.iter, second.start_iter) == (5, 6)  # 12 images seen = 6 iterations of 2
    assert second.scheduler.base_lrs == [pytest.approx(small.plan.base_lr)] * len(
        second.scheduler.base_lrs)
    assert second.scheduler.last_epoch == 5
    for hook in (*first._hooks, *second._hooks):  # trainers that never ran keep files open
        for writer in getattr(hook, "_writers", []):
            writer.close()
