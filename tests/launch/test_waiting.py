"""``wait_until``: returns the first truthy answer, and names what never came."""

from __future__ import annotations

import time

import pytest

from orchestrator.launch.waiting import wait_until


def test_returns_the_first_truthy_answer() -> None:
    answers = iter([None, 0, "", "node-1", "node-2"])
    assert wait_until(lambda: next(answers), timeout=5, what="a node", every=0.01) == "node-1"


def test_times_out_naming_what_never_came() -> None:
    calls = []
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="rank 1 never started"):
        wait_until(lambda: calls.append(1), timeout=0.2, what="rank 1 never started", every=0.05)
    assert 0.2 <= time.monotonic() - started < 2
    assert len(calls) >= 3  # it kept asking, and asked once more at the deadline
