"""Error types the command line maps to exit codes (SPEC section 3: 2 bad input, 1 job failed),
and the reason of a failure told in one line."""

from __future__ import annotations

import errno
import re

__all__ = ["OrchestratorError", "InputError", "JobFailedError", "strip_sql", "disk_reason"]


class OrchestratorError(Exception):
    """Base class: the message is shown to the user as is, so it must say what to do."""

    exit_code = 1


class InputError(OrchestratorError):
    """The spec, the data or the arguments are wrong; nothing was started."""

    exit_code = 2


class JobFailedError(OrchestratorError):
    """The job started and failed (Ray, training or tracking)."""

    exit_code = 1


# What sqlalchemy appends to a database error: the statement, its parameters, a link, and a
# note on autoflush. Useless to a user, and the parameters may hold their data.
_SQL_NOISE = re.compile(
    r"\[SQL: .*?\](?=\n|$)|\[parameters: .*?\](?=\n|$)|\(Background on this error at: [^)]*\)"
    r"|\(raised as a result of Query-invoked autoflush;[^)]*\)", re.DOTALL)


def strip_sql(error: BaseException | str | None) -> str:
    """The error's text without SQL statements, parameters or sqlalchemy's links."""
    text = _SQL_NOISE.sub("", str(error))
    return "\n".join(line for line in text.splitlines() if line.strip()).strip()


# Failures that no retry fixes: the machine's storage refused a write.
_DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large (a file-size limit)",
                errno.EROFS: "read-only file system"}
_DISK_TEXTS = {"No space left on device": "no space left on device",
               "database or disk is full": "no space left on device",
               "Disk quota exceeded": "disk quota exceeded",
               "File too large": "file too large (a file-size limit)",
               "Read-only file system": "read-only file system",
               # sqlite's word when a write fails for a reason it does not tell apart
               "disk I/O error": "disk I/O error (a full disk, a file-size limit or a failing "
                                 "disk)"}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
    return seen


def disk_reason(exc: BaseException) -> str | None:
    """A storage failure anywhere behind ``exc`` (its causes and contexts, and the text of
    errors relayed from other processes, such as a Ray worker's), in one line; else None."""
    for item in _chain(exc):
        if isinstance(item, OSError) and item.errno in _DISK_ERRNOS:
            where = f": {item.filename}" if item.filename else ""
            return f"{_DISK_ERRNOS[item.errno]}{where}"
    for item in _chain(exc):
        for text, reason in _DISK_TEXTS.items():
            if text in str(item):
                return reason
    return None
