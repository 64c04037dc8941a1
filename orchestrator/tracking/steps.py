"""The MLflow step axis: iterations at the spec's reference batch, for every worker count.

An iteration of detectron2 means a different amount of training at every total batch, and an
elastic restart renumbers iterations (``training.elastic.equivalent_iteration``). MLflow steps
therefore count reference iterations instead: ``step = (images_seen - 1) // reference_batch``,
the 0-based index of the reference iteration that the iteration's last image belongs to. At
the reference batch this is detectron2's own iteration; runs with 1 or 64 workers that have
seen the same images share a step, and a step never goes backwards when the batch changes.

A batch above the reference batch makes steps jump by more than 1. A batch below it puts
several iterations on one step: only the last of them (the one that completes the reference
iteration) is logged there, see ``tracking.writer.MLflowWriter``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StepAxis", "axis_label"]


@dataclass(frozen=True, kw_only=True)
class StepAxis:
    """Maps detectron2 iterations trained at ``batch`` to steps at ``reference_batch``.

    Images seen after iteration ``i`` are ``(i + 1) * batch``: the plan counts them so, and an
    elastic restart continues at the iteration of the new batch with as many images seen.

    Example:
        >>> StepAxis(batch=1, reference_batch=2).step(3)
        1
    """

    batch: int = 1
    reference_batch: int = 1

    def __post_init__(self) -> None:
        if self.batch < 1 or self.reference_batch < 1:
            raise ValueError(f"batches must be positive, got batch {self.batch}, "
                             f"reference_batch {self.reference_batch}")

    def images_seen(self, iteration: int) -> int:
        """Images trained on once ``iteration`` (0-based) is done."""
        return (iteration + 1) * self.batch

    def step(self, iteration: int) -> int:
        """The reference iteration (0-based) that ``iteration`` completes or is part of."""
        return (self.images_seen(iteration) - 1) // self.reference_batch

    def done(self, iteration: int) -> int:
        """Reference iterations completed once ``iteration`` is done (1-based counts, as
        the step of MLflow images: ``training.visualize``)."""
        return self.images_seen(iteration) // self.reference_batch

    def final(self, iteration: int) -> bool:
        """Whether no later iteration lands on ``iteration``'s step (its value is the last)."""
        return self.step(iteration + 1) > self.step(iteration)


def axis_label(reference_batches: set[int]) -> str:
    """The x-axis title of plotted runs: one reference batch, or the ones that disagree."""
    if len(reference_batches) == 1:
        return f"iterations at reference batch {next(iter(reference_batches))}"
    if not reference_batches:
        return "iteration"
    shown = ", ".join(map(str, sorted(reference_batches)))
    return f"iterations at reference batches {shown} (not comparable)"
