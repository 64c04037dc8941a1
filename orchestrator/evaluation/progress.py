"""How far an evaluation is and what it costs: images done, ETA, scoring and total seconds.

Why it exists: at COCO-val size an evaluation runs for minutes (inference on every rank, then
scoring on rank 0) while the driver's progress bar stands at the last iteration. The evaluator
tells an ``EvalProgress`` what it did; the progress goes to ``report`` at most every
``every_s`` seconds and at each change of phase (the trainer forwards it to the driver), and the
scoring to the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["EvalProgress", "ProgressReport"]

logger = logging.getLogger(__name__)

ProgressReport = Callable[[dict[str, Any]], None]
"""Gets ``{"phase": "inference" | "scoring" | "done", "done": images, "total": images or None,
"eta_s": seconds or None, "seconds": since the start, "scoring_seconds": None until scored}``."""


class EvalProgress:
    """Progress of one evaluation at a time on this rank; ``start`` begins the next one.

    Args:
        report: called with the status dict (see ``ProgressReport``); an error in it is logged
            and does not stop the evaluation.
        every_s: least seconds between two inference reports.
    """

    def __init__(self, report: ProgressReport | None = None, *, every_s: float = 5.0) -> None:
        self.report = report
        self._every = every_s
        self._begin(None)

    def _begin(self, total: int | None) -> None:
        self.total, self.done = total, 0
        self.phase = "inference"
        self.scoring_seconds: float | None = None
        self._start = self._reported = time.monotonic()

    def start(self, total: int | None) -> None:
        """A new evaluation of ``total`` images on this rank (None: unknown) begins now."""
        self._begin(total)
        self._send()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._start

    def eta_s(self) -> float | None:
        if not self.total or not self.done:
            return None
        return self.seconds / self.done * max(0, self.total - self.done)

    def status(self) -> dict[str, Any]:
        return {"phase": self.phase, "done": self.done, "total": self.total,
                "eta_s": self.eta_s(), "seconds": self.seconds,
                "scoring_seconds": self.scoring_seconds}

    def advance(self, images: int) -> None:
        """``images`` more images went through the model."""
        self.done += images
        if time.monotonic() - self._reported >= self._every:
            self._send()

    @contextmanager
    def scoring(self, what: str) -> Iterator[None]:
        """Time the scoring of ``what`` (e.g. ``5000 images, 500000 detections: bbox, segm``)."""
        self.phase = "scoring"
        logger.info("scoring %s ...", what)
        self._send()
        start = time.monotonic()
        yield
        self.scoring_seconds = time.monotonic() - start
        logger.info("scored %s in %.1f s (evaluation so far %.1f s)", what,
                    self.scoring_seconds, self.seconds)

    def finish(self) -> None:
        """The evaluation is over (on this rank)."""
        self.phase = "done"
        self._send()

    def _send(self) -> None:
        self._reported = time.monotonic()
        if self.report is None:
            return
        try:
            self.report(self.status())
        except Exception:  # noqa: BLE001 - showing progress must not end an evaluation
            logger.exception("evaluation progress report failed")
