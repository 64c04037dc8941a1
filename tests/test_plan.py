from __future__ import annotations

import pytest
import yaml

from orchestrator.errors import InputError
from orchestrator.plan import make_plan
from orchestrator.spec import JobSpec, parse_spec
from tests.conftest import TINY_JOB


def spec_with(**overrides: object) -> JobSpec:
    return parse_spec(yaml.safe_load(TINY_JOB), overrides=[f"{k}={v}" for k, v in
                                                          overrides.items()])


def reference(workers: int, ims: int, **more: object) -> JobSpec:
    return spec_with(**{"resources.workers": workers, "resources.ims_per_worker": ims,
                        "solver.reference_lr": 0.02, "solver.reference_batch": 16, **more})


@pytest.mark.parametrize(("workers", "ims", "batch", "lr"), [
    (8, 2, 16, 0.02),
    (2, 6, 12, 0.015),
    (16, 2, 32, 0.04),
])
def test_linear_scaling_rule(workers: int, ims: int, batch: int, lr: float) -> None:
    plan = make_plan(reference(workers, ims))
    assert plan.total_batch == batch
    assert plan.base_lr == pytest.approx(lr)


def test_iterations_at_reference_batch_are_rescaled() -> None:
    spec = reference(16, 2, **{"solver.max_iter": 90000, "solver.steps": "[60000, 80000]",
                               "solver.steps_unit": "iter", "solver.warmup_iters": 1000,
                               "solver.checkpoint_period": 5000, "eval.period": 10000})
    plan = make_plan(spec)
    assert (plan.max_iter, plan.steps, plan.warmup_iters) == (45000, (30000, 40000), 500)
    assert (plan.checkpoint_period, plan.eval_period) == (2500, 5000)


@pytest.mark.parametrize(("images", "batch", "per_epoch", "twelve"), [
    (115_000, 16, 7188, 86_256),
    (6_735, 8, 842, 10_104),
    (117_266, 16, 7330, 87_960),
])
def test_epochs_to_iterations(images: int, batch: int, per_epoch: int, twelve: int) -> None:
    spec = reference(batch // 2, 2, **{"solver.max_iter": "null", "solver.epochs": 12})
    plan = make_plan(spec, usable_images=images)
    assert plan.iters_per_epoch == per_epoch
    assert plan.max_iter == twelve


def test_epoch_steps_and_fraction_steps() -> None:
    spec = reference(4, 2, **{"solver.max_iter": "null", "solver.epochs": 12,
                              "solver.steps": "[8, 11]", "solver.steps_unit": "epoch"})
    assert make_plan(spec, usable_images=6735).steps == (6736, 9262)
    spec = reference(4, 2, **{"solver.max_iter": 1000, "solver.steps": "[0.5, 0.75]"})
    assert make_plan(spec).max_iter == 2000  # batch 8 against a reference of 16
    assert make_plan(spec).steps == (1000, 1500)


def test_epochs_need_a_count() -> None:
    spec = reference(4, 2, **{"solver.max_iter": "null", "solver.epochs": 1})
    with pytest.raises(InputError, match="give solver.max_iter instead"):
        make_plan(spec, usable_images=None)
    with pytest.raises(InputError, match="no usable images"):
        make_plan(spec, usable_images=0)


def test_steps_outside_the_schedule_are_an_input_error() -> None:
    spec = reference(8, 2, **{"solver.max_iter": 100, "solver.steps": "[150]",
                              "solver.steps_unit": "iter"})
    with pytest.raises(InputError, match="outside"):
        make_plan(spec)


def test_device_and_backend_follow_gpus() -> None:
    assert (make_plan(reference(2, 2)).device, make_plan(reference(2, 2)).backend) == (
        "cpu", "gloo")
    gpu = reference(2, 2, **{"resources.gpus_per_worker": 1})
    assert (make_plan(gpu).device, make_plan(gpu).backend) == ("cuda", "nccl")


def test_params_have_the_same_names_for_every_plan() -> None:
    a = make_plan(reference(2, 2)).as_params()
    b = make_plan(reference(8, 4, **{"solver.max_iter": "null", "solver.epochs": 1}),
                  usable_images=100).as_params()
    assert a.keys() == b.keys()
    assert {"workers", "ims_per_worker", "total_batch", "base_lr", "max_iter"} <= a.keys()


@pytest.mark.parametrize("workers", [4, 8, 16, 32])
def test_agrees_with_detectron2_auto_scale_workers(workers: int) -> None:
    """Where both rules apply (8 reference workers, 2 images each) they give the same cfg."""
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultTrainer

    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 16, 0.02, 90000
    cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = (60000, 80000), 1000
    cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD = 5000, 10000
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    d2 = DefaultTrainer.auto_scale_workers(cfg, workers)
    plan = make_plan(reference(workers, 2, **{
        "solver.max_iter": 90000, "solver.steps": "[60000, 80000]", "solver.steps_unit": "iter",
        "solver.warmup_iters": 1000, "solver.checkpoint_period": 5000, "eval.period": 10000}))
    assert plan.total_batch == d2.SOLVER.IMS_PER_BATCH
    assert plan.base_lr == pytest.approx(d2.SOLVER.BASE_LR)
    assert plan.max_iter == d2.SOLVER.MAX_ITER
    assert plan.steps == tuple(d2.SOLVER.STEPS)
    assert plan.warmup_iters == d2.SOLVER.WARMUP_ITERS
    assert plan.checkpoint_period == d2.SOLVER.CHECKPOINT_PERIOD
    assert plan.eval_period == d2.TEST.EVAL_PERIOD
