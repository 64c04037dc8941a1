"""Polling for something another process does: a node coming up, a log line, a metric."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(probe: Callable[[], T], *, timeout: float, what: str, every: float = 0.5) -> T:
    """Call ``probe`` every ``every`` seconds until it returns something truthy, and return
    that; ``TimeoutError(what)`` once ``timeout`` seconds have passed without it."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(what)
        time.sleep(every)
