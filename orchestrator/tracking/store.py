"""Opening the MLflow store safely: first use serialized, and no SQL on the terminal.

A fresh sqlite store is created (its schema migrated by alembic) by whichever client opens it
first. Two ``submit``s started together in a fresh folder both migrate it: one fails with
"duplicate column" and an SQL dump. Both then create the experiment: one fails with "already
exists". Here a file lock beside the database lets one process create the store and the
experiment while the other waits, then finds them. Errors and MLflow's own error logs keep
their reason and lose the SQL statement, its parameters and the traceback MLflow logs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from orchestrator.errors import JobFailedError, strip_sql
from orchestrator.integrity import locked
from orchestrator.secrets import redact_urls

__all__ = ["open_store", "experiment_id", "quiet_sql_logs"]

# MLflow logs a caught database error with its statement and a traceback, at ERROR.
_SQL_LOGGERS = ("mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store", "alembic")


class _NoSql(logging.Filter):
    """Keep the record's reason; drop the SQL, its parameters and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = strip_sql(record.getMessage())
        reason = strip_sql(record.exc_info[1]) if record.exc_info else ""
        record.msg = text if reason in text else f"{text} {reason}"
        record.args, record.exc_info, record.exc_text = None, None, None
        return True


_FILTER = _NoSql()


def quiet_sql_logs() -> None:
    """Filter MLflow's database loggers (once; called when a store is opened, never at
    import): a failed statement is told in one line."""
    for name in _SQL_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def _lock_file(tracking_uri: str) -> Path | None:
    """``.<db>.lock`` beside a sqlite database (other stores have servers that serialize)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    return db.parent / f".{db.name}.lock"


@contextmanager
def _first_use(tracking_uri: str) -> Iterator[None]:
    lock = _lock_file(tracking_uri)
    with locked(lock) if lock is not None else nullcontext():
        yield


def open_store(tracking_uri: str) -> Any:
    """An ``MlflowClient`` on ``tracking_uri``; a fresh sqlite store is created by one process
    at a time. An error is a JobFailedError naming the store and the reason, without SQL."""
    from mlflow.tracking import MlflowClient

    quiet_sql_logs()
    try:
        with _first_use(tracking_uri):
            return MlflowClient(tracking_uri=tracking_uri)  # creates and migrates the schema
    except Exception as exc:  # sqlalchemy's and alembic's errors are not MlflowExceptions
        raise JobFailedError(redact_urls(f"MLflow at {tracking_uri}: cannot open the store: "
                                         f"{strip_sql(exc)}")) from None


def experiment_id(client: Any, tracking_uri: str, name: str,
                  artifact_location: str | None) -> str:
    """The id of experiment ``name``, created if missing (one process at a time)."""
    with _first_use(tracking_uri):
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        return str(client.create_experiment(name, artifact_location=artifact_location))
