"""The scaling plan: what a spec's reference recipe becomes at the actual worker count.

Rules (SPEC section 4): total batch ``B = workers * ims_per_worker``; linear LR scaling
``lr = reference_lr * B / reference_batch``; iteration counts given at the reference batch are
divided by ``B / reference_batch`` and rounded the way detectron2's
``DefaultTrainer.auto_scale_workers`` rounds them, so both rules agree where both apply. An
epoch schedule counts the usable training images: ``ceil(N / B)`` iterations per epoch.

The plan is applied once, to the worker's cfg, with detectron2's own
``SOLVER.REFERENCE_WORLD_SIZE`` set to 0 so nothing is scaled twice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from orchestrator.errors import InputError
from orchestrator.spec import JobSpec

__all__ = ["ImageCountUnknown", "ScalingPlan", "make_plan", "replan"]


class ImageCountUnknown(InputError):
    """An epoch schedule for data that cannot be counted here (yet)."""


@dataclass(frozen=True, kw_only=True)
class ScalingPlan:
    """Resolved numbers handed to every worker and logged as MLflow params."""

    workers: int
    ims_per_worker: int
    total_batch: int
    reference_batch: int
    reference_lr: float
    scale: float
    base_lr: float
    usable_images: int | None
    iters_per_epoch: int | None
    epochs: float | None
    max_iter: int
    warmup_iters: int
    steps: tuple[int, ...]
    checkpoint_period: int
    eval_period: int
    device: str
    backend: str

    def as_params(self) -> dict[str, str]:
        """Flat string params for MLflow (same names for every run, so runs line up)."""
        return {k: "" if v is None else str(v) for k, v in asdict(self).items()}

    def describe(self) -> list[tuple[str, str]]:
        """Rows for the plan table printed by ``submit``."""
        per_epoch = f"{self.iters_per_epoch} iters/epoch" if self.iters_per_epoch else "-"
        return [
            ("workers", f"{self.workers} x {self.ims_per_worker} images ({self.device}, "
                        f"{self.backend})"),
            ("total batch", f"{self.total_batch} (reference {self.reference_batch}, "
                            f"scale {self.scale:g})"),
            ("learning rate", f"{self.base_lr:g} (reference {self.reference_lr:g})"),
            ("usable images", "-" if self.usable_images is None else str(self.usable_images)),
            ("schedule", f"{self.max_iter} iters" + (
                f" = {self.epochs:g} epochs x {per_epoch}" if self.epochs else "")),
            ("warmup", f"{self.warmup_iters} iters"),
            ("lr steps", ", ".join(map(str, self.steps)) or "none"),
            ("checkpoint every", f"{self.checkpoint_period} iters"),
            ("evaluate every", f"{self.eval_period} iters" if self.eval_period else "at the end"),
        ]


def _rescale(iters: float, scale: float) -> int:
    """An iteration count at the reference batch, at the actual batch (detectron2's rounding)."""
    return int(round(iters / scale))


def _period(iters: int, scale: float) -> int:
    """Periods stay >= 1 when given; 0 keeps meaning 'never/only at the end'."""
    return 0 if iters == 0 else max(1, _rescale(iters, scale))


def _schedule(spec: JobSpec, batch: int, usable: int | None) -> tuple[int, int | None]:
    """(max_iter, iters_per_epoch) from either max_iter or epochs."""
    solver = spec.solver
    scale = batch / solver.reference_batch
    if solver.max_iter is not None:
        per_epoch = math.ceil(usable / batch) if usable else None
        return max(1, _rescale(solver.max_iter, scale)), per_epoch
    if usable is None:
        raise ImageCountUnknown(
            "solver.epochs needs the number of usable training images, which is unknown for "
            "this dataset: give solver.max_iter instead, or a dataset json that can be counted"
        )
    if usable < 1:
        raise InputError("the training set has no usable images (every image lacks annotations)")
    per_epoch = math.ceil(usable / batch)
    assert solver.epochs is not None
    return max(1, math.ceil(per_epoch * solver.epochs)), per_epoch


def _steps(spec: JobSpec, max_iter: int, scale: float, per_epoch: int | None) -> tuple[int, ...]:
    solver = spec.solver
    if solver.steps_unit == "fraction":
        steps = [int(round(s * max_iter)) for s in solver.steps]
    elif solver.steps_unit == "iter":
        steps = [_rescale(s, scale) for s in solver.steps]
    else:
        if per_epoch is None:
            raise InputError("solver.steps_unit=epoch needs a countable dataset; use fractions")
        steps = [int(round(s * per_epoch)) for s in solver.steps]
    bad = [s for s in steps if not 0 < s < max_iter]
    if bad:
        raise InputError(
            f"solver.steps: {solver.steps} ({solver.steps_unit}) give iterations {steps}, "
            f"outside (0, max_iter={max_iter}); adjust steps or the schedule"
        )
    return tuple(sorted(steps))


def make_plan(spec: JobSpec, usable_images: int | None = None) -> ScalingPlan:
    """Compute the plan for ``spec`` given the count of usable training images (if known)."""
    res, solver = spec.resources, spec.solver
    batch = res.max_workers * res.ims_per_worker  # elastic specs plan for the full size
    scale = batch / solver.reference_batch
    max_iter, per_epoch = _schedule(spec, batch, usable_images)
    gpu = res.gpus_per_worker > 0
    return ScalingPlan(
        workers=res.max_workers,
        ims_per_worker=res.ims_per_worker,
        total_batch=batch,
        reference_batch=solver.reference_batch,
        reference_lr=solver.reference_lr,
        scale=scale,
        base_lr=solver.reference_lr * scale,
        usable_images=usable_images,
        iters_per_epoch=per_epoch,
        epochs=solver.epochs,
        max_iter=max_iter,
        warmup_iters=min(_rescale(solver.warmup_iters, scale), max_iter),
        steps=_steps(spec, max_iter, scale, per_epoch),
        checkpoint_period=_period(solver.checkpoint_period, scale),
        eval_period=_period(spec.eval.period, scale) if spec.eval.enabled else 0,
        device="cuda" if gpu else "cpu",
        backend="nccl" if gpu else "gloo",
    )


def replan(spec: JobSpec, workers: int, usable_images: int | None) -> ScalingPlan:
    """The plan at another worker count (an elastic group restarted at ``workers``)."""
    resources = spec.resources.model_copy(update={"workers": workers})
    return make_plan(spec.model_copy(update={"resources": resources}), usable_images)
