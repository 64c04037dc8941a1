"""Each rank's watch for a stalled group (see ``orchestrator.training.hang``), as a detectron2
hook: it costs the training thread one attribute write per iteration."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from detectron2.engine import HookBase

from orchestrator.training.hang import (
    Member,
    format_report,
    report_line,
    stack_of,
    thread_stacks,
    write_report,
)

__all__ = ["HangWatch", "WatchContext"]

logger = logging.getLogger(__name__)


@dataclass
class WatchContext:
    """What a rank's watch needs to report: the run, the board and the group."""

    board: Any
    members: list[Member]
    node: str
    timeout_s: float
    tracking_uri: str
    run_id: str
    output_dir: str
    queue: Any = None  # the driver's progress queue: the report's line is shown there


class HangWatch(HookBase):
    """Each rank: a thread that arrives on the board when this rank finished no iteration
    for ``stall_s`` (default: half of ``run.collective_timeout_s``, so it acts before the
    collective fails); the first rank to arrive writes the report.

    ``after_train`` (run on failure too) waits for a report in progress, so the artifact is
    written before Ray restarts the group."""

    def __init__(self, context: WatchContext, *, stall_s: float | None = None,
                 grace_s: float | None = None, poll_s: float = 1.0) -> None:
        self._ctx = context
        self._stall = stall_s if stall_s is not None else context.timeout_s / 2
        self._grace = grace_s if grace_s is not None else min(10.0, self._stall / 3)
        self._poll = poll_s
        self._beat = (-1, time.monotonic())  # (iteration, when it finished)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reported: list[str] = []  # this rank's report lines

    def before_train(self) -> None:
        import ray

        if self._rank() == 0:
            try:
                ray.get(self._ctx.board.start_attempt.remote(self._ctx.members), timeout=60)
            except Exception:  # noqa: BLE001 - diagnostics must never stop training
                logger.exception("hang diagnostics are off: the driver's board did not answer")
                return
        self._beat = (self.trainer.start_iter - 1, time.monotonic())
        self._thread = threading.Thread(target=self._watch, name="hang-watch", daemon=True)
        self._thread.start()

    def after_step(self) -> None:
        self._beat = (self.trainer.iter, time.monotonic())

    def after_train(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._stall + 180)

    def _rank(self) -> int:
        from detectron2.utils import comm

        return comm.get_rank()

    def _watch(self) -> None:
        seen = None  # the beat already acted on: one arrival per stall
        while not self._stop.wait(self._poll):
            beat = self._beat
            if beat != seen and time.monotonic() - beat[1] >= self._stall:
                seen = beat
                try:
                    self._arrive(beat[0] + 1)
                except Exception:  # noqa: BLE001 - diagnostics must never break training
                    logger.exception("hang diagnostics failed")

    def _arrive(self, iteration: int) -> None:
        import ray

        board = self._ctx.board
        first = ray.get(board.arrive.remote(self._rank(), iteration, thread_stacks()),
                        timeout=60)
        if not first:
            return
        time.sleep(self._grace)  # the other live ranks stalled at about the same time
        line = self._report()
        ray.get(board.settle.remote(line), timeout=60)

    def _report(self) -> str | None:
        import ray

        attempt, members, arrivals = ray.get(self._ctx.board.state.remote(), timeout=60)
        absent = [m for m in members if m.rank not in arrivals]
        if not absent:  # everyone is slow together (a long evaluation): not a hang
            return None
        missing = {m.rank: stack_of(m, self._ctx.node) for m in absent}
        text = format_report(attempt=attempt, members=members, arrivals=arrivals,
                             missing=missing, stalled_s=self._stall,
                             timeout_s=self._ctx.timeout_s)
        name = write_report(text, attempt=attempt, output_dir=self._ctx.output_dir,
                            tracking_uri=self._ctx.tracking_uri, run_id=self._ctx.run_id)
        line = report_line(text, members=len(arrivals) + len(missing), artifact=name)
        logger.error(line)
        self.reported.append(line)
        self._show(line)
        return line

    def _show(self, line: str) -> None:
        if self._ctx.queue is not None:
            with contextlib.suppress(Exception):
                self._ctx.queue.put_nowait({"message": line})
