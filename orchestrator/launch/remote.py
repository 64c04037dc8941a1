"""Submit a job to a Ray cluster through the Ray Jobs API, and manage submitted jobs.

The driver then runs on the cluster's head: the project code is uploaded as the job's working
directory together with the resolved spec, and the entrypoint is ``orchestrator submit`` on
that spec, so the cluster runs exactly the code and spec the user has locally.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.errors import InputError, JobFailedError
from orchestrator.launch.storage_probe import split_credentials
from orchestrator.models import PROJECT_ROOT
from orchestrator.secrets import MASK, redact_urls, worker_env
from orchestrator.spec import JobSpec

__all__ = ["jobs_client", "staged_project", "for_cluster", "submit_remote", "follow", "stop_job",
           "TERMINAL"]

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# What the cluster needs to run the driver: the package, model configs and job specs.
_UPLOAD = ("orchestrator", "configs", "jobs", "pyproject.toml")
SPEC_NAME = "submitted-job.yaml"
# How long Ray's job supervisor lets the driver unwind after SIGTERM (``orchestrator stop``)
# before it SIGKILLs it. Ray's 3 s is less than a driver takes to stop Ray Train and mark its
# MLflow run KILLED; read by the supervisor from the job's environment.
STOP_WAIT_S = "60"


def jobs_client(address: str) -> Any:
    """A Jobs API client; an unreachable address is bad input (exit 2), not a job failure."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:
        raise InputError(f"--address {address}: no Ray Jobs API answers there ({exc}); "
                         "start the cluster or forward its dashboard port (8265)") from None


@contextmanager
def staged_project(spec: JobSpec) -> Iterator[Path]:
    """A temporary copy of the project with the resolved spec beside it (the working dir)."""
    with tempfile.TemporaryDirectory(prefix="orchestrator-job-") as tmp:
        root = Path(tmp)
        for name in _UPLOAD:
            source = PROJECT_ROOT / name
            if source.is_dir():
                shutil.copytree(source, root / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif source.is_file():
                shutil.copy2(source, root / name)
        (root / SPEC_NAME).write_text(spec.resolved_yaml(redact=False), encoding="utf-8")
        yield root


def submit_remote(spec: JobSpec, *, address: str, console: Console,
                  python: str = "python", resume: str | None = None) -> str:
    """Upload and start the job on the cluster; returns the submission id. ``resume``: the
    cluster's driver continues that MLflow run (``submit --resume``)."""
    from orchestrator.launch.placement import check_cluster

    client = jobs_client(address)
    check_cluster(spec, address)  # workers no node can hold: refused before anything starts
    entrypoint = f"{shlex.quote(python)} -m orchestrator submit {SPEC_NAME}"
    if resume:
        entrypoint += f" --resume {shlex.quote(resume)}"
    spec, env = for_cluster(spec)
    with staged_project(spec) as root:
        job_id = _submit_with_retry(client, address, entrypoint=entrypoint,
                                    runtime_env={"working_dir": str(root), "env_vars": {
                                        "RAY_JOB_STOP_WAIT_TIME_S": STOP_WAIT_S, **env}},
                                    metadata={"orchestrator_job": spec.name})
    console.print(f"submitted {spec.name} as Ray job {job_id} to {address}")
    return job_id


def for_cluster(spec: JobSpec) -> tuple[JobSpec, dict[str, str]]:
    """The spec to upload and the job's environment: secrets travel only in the environment.

    ``run.env`` and ``run.env_from`` values become the job's env vars (Ray hands them to the
    driver and every worker); the uploaded spec keeps the ``run.env`` keys with masked values
    (the cluster's driver records them as a local run would), a tracking URI with
    credentials travels as ``MLFLOW_TRACKING_URI``, and the key of an
    ``s3://KEY:SECRET@bucket`` storage path as ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``.
    """
    env = worker_env(spec.run.env, spec.run.env_from)
    storage, storage_env = split_credentials(spec.run.storage_path)
    env.update(storage_env)
    run = spec.run.model_copy(update={"env": dict.fromkeys(spec.run.env, MASK),
                                      "storage_path": storage})
    tracking = spec.tracking
    uri = tracking.tracking_uri
    if uri and redact_urls(uri) != uri:
        env["MLFLOW_TRACKING_URI"] = uri
        tracking = tracking.model_copy(update={"tracking_uri": None})
    return spec.model_copy(update={"run": run, "tracking": tracking}), env


# Refusals worth another try: the job agent not up yet (the first minute after ``ray up``),
# or the dashboard timing out on a busy head (the job may have been created all the same).
_RETRYABLE = ("No available agent", "status code 504", "status code 503")


def _submit_with_retry(client: Any, address: str, *, wait_s: float = 120,
                       **job: Any) -> str:
    """Submit under a fixed submission id, retrying the refusals a slow head gives; a retry
    finds a job that a timed-out request created after all instead of starting a second
    one. Other refusals fail at once."""
    name = job.get("metadata", {}).get("orchestrator_job", "job")
    submission_id = f"{name}-{uuid.uuid4().hex[:10]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return str(client.submit_job(submission_id=submission_id, **job))
        except Exception as exc:
            if not any(s in str(exc) for s in _RETRYABLE) or time.monotonic() > deadline:
                raise JobFailedError(f"the cluster at {address} refused the job: {exc}") from exc
            try:
                client.get_job_info(submission_id)
                return submission_id
            except Exception:  # noqa: BLE001 - it was not created: try again
                time.sleep(2)


async def _tail(client: Any, job_id: str, console: Console) -> None:
    async for lines in client.tail_job_logs(job_id):
        console.out(lines, end="", highlight=False)


def follow(address: str, job_id: str, console: Console) -> str:
    """Stream the job's driver output until it ends; returns the final status name."""
    client = jobs_client(address)
    asyncio.run(_tail(client, job_id, console))
    return str(client.get_job_status(job_id).value)


def stop_job(address: str, job_id: str, *, wait_s: float = 90) -> str:
    """Ask Ray to stop the job and wait until it has ended: by then its driver has marked
    the MLflow run KILLED (it is given ``STOP_WAIT_S`` for that)."""
    client = jobs_client(address)
    if not client.stop_job(job_id):
        return f"{job_id}: already finished"
    deadline = time.monotonic() + wait_s
    status = "STOPPING"
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return f"{job_id}: stop requested; the job ended {status}"
        time.sleep(1)
    raise JobFailedError(f"{job_id}: stop requested, but the job is still {status} after "
                         f"{wait_s:g} s")
