"""The MLflow run a job owns: created by the driver, ended by the driver in every outcome.

While it is open the driver beats for it (``tracking.heartbeat``), so a run whose driver died
without ending it is known as stale, and can be resumed.

Workers only log into it (rank 0, ``tracking.writer``) with the run id the driver passes down.
MlflowClient with explicit run ids throughout: no fluent, process-wide active run.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError, JobFailedError, strip_sql
from orchestrator.secrets import make_private, redact_urls
from orchestrator.tracking import heartbeat

__all__ = [
    "default_tracking_uri",
    "flatten",
    "RunTracker",
    "git_commit",
]

_PARAM_LIMIT = 6000  # MLflow rejects longer param values


def default_tracking_uri(workdir: Path | None = None) -> str:
    """A sqlite store in the working directory, as an absolute URI (workers run elsewhere)."""
    return f"sqlite:///{((workdir or Path.cwd()) / 'mlflow.db').resolve()}"


def _artifact_root(tracking_uri: str) -> str | None:
    """For local sqlite stores, artifacts go beside the database (not the worker's cwd)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return (db.parent / "mlruns").resolve().as_uri()
    return None


def _local_store(tracking_uri: str) -> list[Path]:
    """The files of a local sqlite store: the database and its artifact folder."""
    if not tracking_uri.startswith("sqlite:///"):
        return []
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    return [db, db.parent / "mlruns"]


def _no_printed_links() -> None:
    """MLflow prints "View run ... at: URL" when a run ends, with the tracking URI as given:
    credentials included. We print the run id ourselves."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts to ``a.b.c`` keys with string values, for MLflow params."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    text = "" if tree is None else str(tree)
    return {prefix.rstrip("."): text[:_PARAM_LIMIT]}


def _get_run(client: Any, run_id: str, tracking_uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise InputError(f"--resume {run_id}: no such MLflow run in "
                         f"{redact_urls(tracking_uri)}") from None


def git_commit(path: Path) -> str:
    """The project's commit, for the run's tags ('' outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"],
                             capture_output=True, text=True, check=False, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@dataclass
class RunTracker:
    """Driver-side handle on one MLflow run."""

    tracking_uri: str
    run_id: str
    experiment_id: str
    stale: str | None = None  # reopen: why the RUNNING run it took over had no driver

    @property
    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    @classmethod
    def create(cls, *, tracking_uri: str, experiment: str, run_name: str,
               tags: dict[str, str]) -> RunTracker:
        """Create (or reuse) the experiment and start a RUNNING run in it."""
        from mlflow.exceptions import MlflowException

        from orchestrator.tracking.store import experiment_id, open_store

        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        _no_printed_links()
        client = open_store(tracking_uri)
        try:
            exp_id = experiment_id(client, tracking_uri, experiment, _artifact_root(tracking_uri))
            run = client.create_run(exp_id, run_name=run_name,
                                    tags={**tags, **heartbeat.driver_tags()})
        except MlflowException as exc:
            raise JobFailedError(redact_urls(f"MLflow at {tracking_uri}: cannot create the run: "
                                             f"{strip_sql(exc)}")) from None
        make_private(*_local_store(tracking_uri))  # a store made before runs were kept private
        heartbeat.beat(tracking_uri, run.info.run_id)
        return cls(tracking_uri=tracking_uri, run_id=run.info.run_id, experiment_id=exp_id)

    @classmethod
    def reopen(cls, *, tracking_uri: str, run_id: str, job: str) -> RunTracker:
        """An existing run, set RUNNING again (``submit --resume``). A RUNNING run is taken
        over only if its driver is gone (``tracking.liveness``): then its ``stale`` reason is
        set, for the caller to show."""
        from orchestrator.tracking.liveness import liveness
        from orchestrator.tracking.store import open_store

        _no_printed_links()
        client = open_store(tracking_uri)
        run = _get_run(client, run_id, tracking_uri)
        if run.data.tags.get("job") != job:
            raise InputError(f"--resume {run_id}: that run belongs to job "
                             f"'{run.data.tags.get('job')}', not '{job}'; resume it with its "
                             "own spec")
        live = liveness(run)
        if live.state == "alive":
            raise InputError(f"--resume {run_id}: the run is still RUNNING: {live.why}; stop "
                             f"it first with: orchestrator stop {run_id}")
        client.update_run(run_id, status="RUNNING")
        for key, value in heartbeat.driver_tags().items():
            client.set_tag(run_id, key, value)
        if heartbeat.TAG_STOP in run.data.tags:  # asked of the driver before this one
            client.delete_tag(run_id, heartbeat.TAG_STOP)
        heartbeat.beat(tracking_uri, run_id)
        return cls(tracking_uri=tracking_uri, run_id=run_id,
                   experiment_id=run.info.experiment_id,
                   stale=live.why if live.state == "stale" else None)

    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str) -> None:
        """FINISHED, FAILED or KILLED: never leave the run RUNNING."""
        heartbeat.forget(self.run_id)
        self.client.set_terminated(self.run_id, status=status)

    def status(self) -> str:
        return str(self.client.get_run(self.run_id).info.status)

    def metrics(self) -> dict[str, float]:
        return dict(self.client.get_run(self.run_id).data.metrics)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)
