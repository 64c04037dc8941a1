"""Error types the command line maps to exit codes (SPEC section 3: 2 bad input, 1 job failed)."""

from __future__ import annotations

__all__ = ["OrchestratorError", "InputError", "JobFailedError"]


class OrchestratorError(Exception):
    """Base class: the message is shown to the user as is, so it must say what to do."""

    exit_code = 1


class InputError(OrchestratorError):
    """The spec, the data or the arguments are wrong; nothing was started."""

    exit_code = 2


class JobFailedError(OrchestratorError):
    """The job started and failed (Ray, training or tracking)."""

    exit_code = 1
