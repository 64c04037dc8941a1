"""Where a worker's start-up goes, phase by phase, in one log line.

Every job and every restart pays for it before its first iteration; without the breakdown one
can only guess whether it is Ray, the imports, the data or the model.
"""

from __future__ import annotations

import logging
import time

__all__ = ["StartupClock"]

logger = logging.getLogger("orchestrator.worker")


def _process_start() -> float:
    import psutil

    return float(psutil.Process().create_time())


class StartupClock:
    """Phase durations since this worker process was created (by Ray, for this attempt)."""

    def __init__(self, entered: float | None = None) -> None:
        created = _process_start()
        self._last = entered if entered is not None else time.time()
        self.phases: list[tuple[str, float]] = [("process", max(0.0, self._last - created))]

    def mark(self, phase: str) -> None:
        """The phase that ends now."""
        now = time.time()
        self.phases.append((phase, now - self._last))
        self._last = now

    def total(self) -> float:
        return sum(seconds for _, seconds in self.phases)

    def log(self) -> None:
        logger.info("worker start-up took %.1f s: %s", self.total(),
                    ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.phases))
