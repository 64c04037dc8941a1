"""The driver's progress lines show an evaluation's progress and cost as rank 0 reports them."""

from __future__ import annotations

import io
import queue
import time

from rich.console import Console

from orchestrator.launch.progress import ProgressFollower


def _record(iteration: int, evaluation: dict[str, object] | None = None) -> dict[str, object]:
    record: dict[str, object] = {"iter": iteration, "max_iter": 4, "eta_s": 3.0,
                                 "losses": {"total_loss": 1.5}}
    return record if evaluation is None else {**record, "eval": evaluation}


def test_every_evaluation_phase_gets_a_line() -> None:
    records: queue.Queue[dict[str, object]] = queue.Queue()
    base = {"done": 0, "total": 250, "eta_s": None, "seconds": 0.5, "scoring_seconds": None}
    for record in (_record(2), _record(2, {**base, "phase": "inference"}),
                   _record(2, {**base, "phase": "inference", "done": 100, "eta_s": 65.0}),
                   _record(2, {**base, "phase": "scoring", "done": 250, "seconds": 80.0}),
                   _record(2, {**base, "phase": "done", "done": 250, "seconds": 95.25,
                               "scoring_seconds": 14.5}),
                   _record(4)):
        records.put(record)
    out = io.StringIO()
    with ProgressFollower(records, Console(file=out, width=200), 4, line_every_s=3600):
        deadline = time.monotonic() + 10
        while not records.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    lines = out.getvalue().splitlines()
    assert lines[0] == "iter 2/4  eta 00:00:03  total_loss 1.500"
    assert lines[1].endswith("eval 0/250 images  eta -")  # the 100/250 one waits line_every_s
    assert lines[2].endswith("eval scoring (80 s so far)")
    assert lines[3].endswith("eval took 95.2 s (scoring 14.5 s)")
    assert lines[4].startswith("iter 4/4") and len(lines) == 5
