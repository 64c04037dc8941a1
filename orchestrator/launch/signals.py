"""Ctrl-C and SIGTERM during a submit: one way out, whoever caught the signal.

Three parties handle these signals in the driver: our ``main`` (SIGTERM raises
KeyboardInterrupt), ``ray.init`` (SIGTERM calls ``sys.exit(15)``) and Ray Train's ``fit``
(SIGINT aborts the controller, then ``sys.exit(0)``). So an interruption reaches our code as
``KeyboardInterrupt`` or ``SystemExit`` with any code; :data:`INTERRUPTS` names both, and the
submit turns either into :class:`RunInterrupted` (exit 130, the run marked KILLED).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.errors import OrchestratorError

__all__ = ["INTERRUPTS", "EXIT_INTERRUPTED", "RunInterrupted", "raise_interrupt",
           "reclaim_sigterm", "restored_handlers", "shielded"]

INTERRUPTS = (KeyboardInterrupt, SystemExit)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, for SIGTERM too (README)
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(OrchestratorError):
    """The run was stopped by a signal and marked KILLED; it can be resumed."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, run_id: str, message: str = "") -> None:
        super().__init__(message or f"interrupted: MLflow run {run_id} marked KILLED")
        self.run_id = run_id


def raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (``orchestrator stop``, Ray stopping a job, ``kill``) unwinds like Ctrl-C."""
    raise KeyboardInterrupt


def reclaim_sigterm() -> None:
    """Call after ``ray.init``: Ray's core worker installs a native SIGTERM handler when the
    driver connects (it prints a stack dump and kills the process, leaving the MLflow run
    RUNNING). Ours unwinds instead."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_interrupt)


@contextmanager
def restored_handlers() -> Iterator[None]:
    """Put back the SIGINT/SIGTERM handlers on the way out: Ray's (installed by ``ray.init``
    and ``fit``) must not outlive the Ray they talk to."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only (a cluster sweep's children run in threads)
        return
    saved: dict[int, Any] = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


@contextmanager
def shielded() -> Iterator[None]:
    """Ignore further SIGINT/SIGTERM while the run is being closed, so a second Ctrl-C (or
    the group's signal arriving twice) cannot leave it RUNNING or Ray half shut down."""
    with restored_handlers():
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
        yield
