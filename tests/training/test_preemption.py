from __future__ import annotations

import os
import signal
import time

import pytest

from orchestrator.training import preemption
from orchestrator.training.preemption import due, sigterm_received


@pytest.mark.parametrize(("done", "every", "asked"), [
    (10, 10, True), (20, 10, True), (9, 10, False), (11, 10, False), (3, 1, True),
    (30, 10, False)])  # the last iteration: its checkpoint is written anyway
def test_asks_every_n_iterations_but_never_after_the_last(done: int, every: int,
                                                          asked: bool) -> None:
    assert due(done, every, max_iter=30) is asked


def test_sigterm_only_sets_a_flag_and_a_second_one_goes_to_the_previous_handler() -> None:
    seen: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        preemption._run_on_main_thread(install=True)
        assert sigterm_received() is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler runs between bytecodes of the main thread
        since = sigterm_received()
        assert since is not None and 0 <= since < 5 and seen == []
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert seen == [signal.SIGTERM]
        preemption._run_on_main_thread(install=False)
        os.kill(os.getpid(), signal.SIGTERM)  # the previous handler is back
        time.sleep(0.1)
        assert seen == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)
