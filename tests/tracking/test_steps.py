"""The step axis: iterations at the reference batch, whatever the batch and its changes."""

from __future__ import annotations

import pytest

from orchestrator.tracking.steps import StepAxis, axis_label
from orchestrator.training.elastic import equivalent_iteration


def test_at_the_reference_batch_the_step_is_the_iteration() -> None:
    axis = StepAxis(batch=16, reference_batch=16)
    assert [axis.step(i) for i in range(5)] == [0, 1, 2, 3, 4]
    assert all(axis.final(i) for i in range(5))


def test_one_and_four_workers_share_a_step_after_the_same_images() -> None:
    one, four = StepAxis(batch=2, reference_batch=8), StepAxis(batch=8, reference_batch=8)
    for done in range(1, 20):  # iterations of the 4-worker run
        assert four.step(done - 1) == one.step(4 * done - 1) == done - 1
    assert [one.step(i) for i in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [one.final(i) for i in range(8)] == [False, False, False, True] * 2


def test_a_batch_above_the_reference_jumps() -> None:
    axis = StepAxis(batch=6, reference_batch=4)
    assert [axis.step(i) for i in range(4)] == [1, 2, 4, 5]  # images 6, 12, 18, 24


def _steps_through_restarts(batches: list[int], iters: int, reference: int) -> list[int]:
    """Steps of every iteration trained, each attempt resuming from the previous one's last
    iteration at the next batch, as ``hooks.load_checkpoint`` does."""
    steps, last, batch = [], -1, batches[0]
    for new in batches:
        start = 0 if last < 0 else equivalent_iteration(last, batch, new) + 1
        axis, batch = StepAxis(batch=new, reference_batch=reference), new
        steps += [axis.step(i) for i in range(start, start + iters)]
        last = start + iters - 1
    return steps


@pytest.mark.parametrize("batches", [[2, 1], [1, 2], [2, 1, 2], [3, 2, 5, 1], [16, 64, 8]])
def test_steps_never_go_backwards_across_a_shrink_or_a_grow(batches: list[int]) -> None:
    steps = _steps_through_restarts(batches, iters=13, reference=4)
    assert steps == sorted(steps)


def test_bad_batches_and_labels() -> None:
    with pytest.raises(ValueError, match="positive"):
        StepAxis(batch=0, reference_batch=2)
    assert axis_label({16}) == "iterations at reference batch 16"
    assert "not comparable" in axis_label({2, 16})
    assert axis_label(set()) == "iteration"
