"""Show training progress on the driver while ``fit()`` blocks.

Rank 0 puts small records (iteration, ETA, losses, and during an evaluation its progress) on a
Ray queue; a daemon thread here reads them and draws a rich progress bar on a terminal, or
prints a line every few seconds otherwise (CI logs, pipes), so long runs are never silent.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["ProgressFollower", "format_eval", "format_record"]


def _clock(seconds: float | None) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds is not None else "-"


def format_eval(status: dict[str, Any]) -> str:
    """``eval 300/1250 images  eta 00:01:10``, ``eval scoring (95 s so far)`` or
    ``eval took 120.3 s (scoring 27.1 s)``, from an ``EvalProgress`` status (rank 0's images)."""
    if status["phase"] == "inference":
        done = f"{status['done']}/{status['total']}" if status.get("total") else status["done"]
        return f"eval {done} images  eta {_clock(status.get('eta_s'))}"
    if status["phase"] == "scoring":
        return f"eval scoring ({status['seconds']:.0f} s so far)"
    scoring = status.get("scoring_seconds")
    return f"eval took {status['seconds']:.1f} s" + (
        f" (scoring {scoring:.1f} s)" if scoring is not None else "")


def format_record(record: dict[str, Any]) -> str:
    """``iter 40/200  eta 0:02:13  total_loss 1.234  loss_cls 0.456`` for one record, then the
    evaluation's progress if one is running."""
    losses = "  ".join(f"{k} {v:.3f}" for k, v in record.get("losses", {}).items())
    text = f"iter {record['iter']}/{record['max_iter']}  eta {_clock(record.get('eta_s'))}  "
    text = (text + losses).rstrip()
    return f"{text}  {format_eval(record['eval'])}" if "eval" in record else text


class ProgressFollower:
    """Context manager: follow ``queue`` until exit. ``last`` holds the latest record."""

    def __init__(self, queue: Any, console: Console, max_iter: int,
                 line_every_s: float = 10.0, label: str = "") -> None:
        self._label = f"{label}: " if label else ""
        self._queue = queue
        self._console = console
        self._max_iter = max_iter
        self._line_every = line_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self.last: dict[str, Any] | None = None
        self.seen_at: float | None = None  # time.monotonic() of the latest record

    def __enter__(self) -> ProgressFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _records(self) -> Any:
        while not self._stop.is_set():
            try:
                record = self._queue.get(timeout=0.5)
            except Exception:  # ray.util.queue.Empty, or the queue actor is gone  # noqa: BLE001
                continue
            self.seen_at = time.monotonic()
            if "message" in record:  # a line a worker wants shown (a hang report's)
                self._console.print(self._label + str(record["message"]), highlight=False,
                                    soft_wrap=True)
                continue
            yield record

    def _run(self) -> None:
        if self._console.is_terminal:
            self._run_bar()
        else:
            self._run_lines()

    def _run_bar(self) -> None:
        # Plain text: a sweep child's label is ``name[key=value]`` (not a style), and it is a
        # format string to TextColumn (braces doubled).
        label = (self._label or "training").replace("{", "{{").replace("}", "}}")
        columns = (TextColumn(label, markup=False), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.description}", markup=False))
        with Progress(*columns, console=self._console, transient=False) as bar:
            task = bar.add_task("starting workers...", total=self._max_iter)
            for record in self._records():
                self.last = record
                bar.update(task, completed=record["iter"],
                           description=format_record(record).split("  ", 1)[-1])

    def _run_lines(self) -> None:
        shown, shown_iter, shown_phase = -math.inf, -1, None  # the first record is shown
        for record in self._records():
            self.last = record
            phase = record.get("eval", {}).get("phase")
            moved = record["iter"] != shown_iter or phase == "inference"
            due = moved and time.monotonic() - shown >= self._line_every
            finished = record["iter"] >= record["max_iter"] and record["iter"] != shown_iter
            if phase != shown_phase or due or finished:
                self._console.print(self._label + format_record(record), highlight=False,
                                    soft_wrap=True)
                shown, shown_iter, shown_phase = time.monotonic(), record["iter"], phase
