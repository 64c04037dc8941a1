"""Run a job's workers on Ray Train: a local Ray started here, or one already running."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from orchestrator.errors import InputError, JobFailedError
from orchestrator.job import WorkerJob
from orchestrator.launch.pending import PendingWatch
from orchestrator.launch.progress import ProgressFollower
from orchestrator.launch.signals import reclaim_sigterm, shielded
from orchestrator.secrets import worker_env
from orchestrator.spec import JobSpec

__all__ = ["check_local_resources", "fit", "ray_session", "ray_train_env", "run_on_ray",
           "ray_run_name"]

logger = logging.getLogger(__name__)

# Quiet, test-friendly defaults that users can still override from the environment.
# Ray Train's controller advances (start, failure seen, restart) once per health-check poll,
# every 2 s by default: 0.5 s takes seconds off every start and every restart.
_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
# For the embedded Ray only, read by Ray when it is imported: its node IP becomes 127.0.0.1
# instead of the machine's address, and with it GCS, raylet, object manager, agents and every
# worker listen on loopback only (Ray's own setting for single-machine Windows/macOS).
# No autoscaler drains this machine's one node, so Ray Train's preemption watcher (an actor
# process started with every worker group, restarts included) would only take CPU from them.
EMBEDDED_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def ray_run_name(job: WorkerJob) -> str:
    """One Ray Train run per MLflow run: re-submitting starts fresh, never resumes by accident."""
    return f"{job.spec.name}-{job.run_id[:8]}"


def check_local_resources(spec: JobSpec) -> None:
    """Refuse (exit 2) what a local Ray could never schedule, instead of waiting forever.
    A driver on a cluster (RAY_ADDRESS) leaves that to the cluster and its autoscaler."""
    if os.environ.get("RAY_ADDRESS"):
        return
    res = spec.resources
    if res.gpus_per_worker <= 0:
        return
    import torch

    have = torch.cuda.device_count()
    need = res.min_workers * res.gpus_per_worker
    if need > have:
        raise InputError(
            f"resources: {res.min_workers} workers x {res.gpus_per_worker:g} GPUs need {need:g} "
            f"GPUs but this machine has {have}; set resources.gpus_per_worker=0 for CPU "
            "or submit to a cluster with --address"
        )


def _init_ray(spec: JobSpec, verbose: bool) -> None:
    import ray

    for key, value in _RAY_ENV.items():
        os.environ.setdefault(key, value)
    common: dict[str, Any] = {"log_to_driver": verbose, "logging_level": logging.WARNING}
    if os.environ.get("RAY_ADDRESS"):  # a Ray job's driver: join the cluster it runs on
        try:  # run.env already travels in the job's runtime env (remote.submit_remote)
            ray.init(address=os.environ["RAY_ADDRESS"], **common)
        except Exception as exc:
            raise JobFailedError(f"could not join the Ray cluster: {exc}") from exc
        reclaim_sigterm()
        return
    res = spec.resources
    num_cpus = math.ceil(spec.run.num_cpus or 0) or max(
        os.cpu_count() or 1, math.ceil(res.max_workers * res.cpus_per_worker))
    for attempt in (1, 2):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     runtime_env={"env_vars": worker_env(spec.run.env, spec.run.env_from)},
                     **common)
            break
        except Exception as exc:
            # Ray gives its raylet a fixed 30 s to register: an overloaded machine can miss
            # that once; anything else (or a second miss) is the user's to see.
            if attempt == 1 and "timed out during startup" in str(exc):
                logger.warning("the embedded Ray did not start in time; trying once more")
                ray.shutdown()
                continue
            raise JobFailedError(f"could not start the embedded Ray: {exc}") from exc
    reclaim_sigterm()


def train_loop(config: dict[str, Any]) -> None:
    """What Ray ships to the workers: detectron2 is imported there, not in the driver (the
    import only to name the function cost the driver seconds before any worker started)."""
    import time

    entered = time.time()
    with warnings.catch_warnings():
        # detectron2/fvcore import noise (torch.jit deprecations) is not the user's concern.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from orchestrator.training.worker import train_loop_per_worker

    train_loop_per_worker(config, entered=entered)


def _failure_config(job: WorkerJob) -> Any:
    """Failures and preemptions have budgets of their own: a spot reclaim is not a bug, so
    ``run.max_failures: 0`` still survives it (``run.max_preemptions``, -1: unlimited)."""
    from ray.train import FailureConfig

    return FailureConfig(  # type: ignore[call-arg]  # Train V2's, Ray 2.60
        max_failures=job.spec.run.max_failures,
        max_preemption_failures=job.spec.run.max_preemptions)


# An elastic group is sized by what Ray's resource view holds, which keeps a lost node for up
# to ~20 s after the GCS declared it dead: each placement tried at the stale size waits this
# long before the size is counted again (docs/faults.md: "Restart time after a node loss").
ELASTIC_START_TIMEOUT_S = 3.0
RAY_START_TIMEOUT_S = 60.0  # Ray Train's own default: a fixed count has no other size to try


def ray_train_env(spec: JobSpec) -> dict[str, str]:
    """Ray Train settings that it reads only from the environment of the driver (which hands
    them to its controller), taken from the spec."""
    timeout = spec.run.worker_start_timeout_s or (
        ELASTIC_START_TIMEOUT_S if spec.resources.max_workers > spec.resources.min_workers
        else RAY_START_TIMEOUT_S)
    return {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": f"{timeout:g}"}


def _trainer(job: WorkerJob, queue: Any, board: Any = None) -> Any:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ.update(ray_train_env(job.spec))  # read when fit() starts the controller
    res = job.spec.resources
    resources = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker > 0:
        resources["GPU"] = res.gpus_per_worker
    return TorchTrainer(
        train_loop,
        train_loop_config={**job.to_config(), "progress_queue": queue, "hang_board": board},
        scaling_config=ScalingConfig(  # type: ignore[call-arg]  # Train V2's, Ray 2.60
            num_workers=res.workers,  # type: ignore[arg-type]
            use_gpu=res.gpus_per_worker > 0, resources_per_worker=resources,
            elastic_resize_monitor_interval_s=job.spec.run.elastic_resize_check_s),
        run_config=RunConfig(name=ray_run_name(job), storage_path=job.spec.run.storage_path,
                             failure_config=_failure_config(job)),
        torch_config=TorchConfig(backend=job.plan.backend,
                                 timeout_s=job.spec.run.collective_timeout_s),
    )


# Runs this driver is training now (a cluster sweep trains several at once): run id -> URI.
_ACTIVE_RUNS: dict[str, str] = {}


def _watch_head(grace_s: float = 20) -> None:
    """A driver joined to a cluster whose head dies is ended by Ray without unwinding (no
    ``finally`` runs), which would leave its MLflow runs RUNNING. This thread (one per
    process) sees the head's GCS port stop answering first, marks the runs in training FAILED
    and exits 1, so ``submit --resume`` can continue them on a new cluster."""
    import socket
    import sys
    import threading
    import time

    import ray

    if any(t.name == "head-watch" for t in threading.enumerate()):
        return
    host, _, port = str(ray.get_runtime_context().gcs_address).rpartition(":")

    def watch() -> None:
        lost = None
        while True:
            time.sleep(2)
            try:
                socket.create_connection((host, int(port)), timeout=2).close()
                lost = None
                continue
            except OSError:
                lost = lost or time.monotonic()
            if time.monotonic() - lost > grace_s:
                from mlflow.tracking import MlflowClient

                for run_id, uri in list(_ACTIVE_RUNS.items()):
                    MlflowClient(tracking_uri=uri).set_terminated(run_id, "FAILED")
                    print(f"error: the Ray head at {host}:{port} is gone: run {run_id} "
                          f"FAILED; continue it with submit --resume {run_id}",
                          file=sys.stderr, flush=True)
                os._exit(1)

    threading.Thread(target=watch, name="head-watch", daemon=True).start()


def _hang_board(job: WorkerJob) -> Any:
    """The actor where the ranks of each attempt meet when training stalls
    (``orchestrator.training.hang``): it lives with the driver, so whichever rank is stuck,
    the others can still tell who did not arrive. None for one worker: nothing to wait for."""
    import ray

    from orchestrator.training.hang import HangBoard

    if job.spec.resources.max_workers < 2:
        return None

    return ray.remote(num_cpus=0)(HangBoard).remote()


def fit(job: WorkerJob, *, console: Console, label: str = "") -> None:
    """Train one job on the Ray this process is connected to, following its progress."""
    import ray
    from ray.util.queue import Queue

    if os.environ.get("RAY_ADDRESS"):
        _watch_head()
    queue = Queue(maxsize=1000)
    board = _hang_board(job)
    trainer = _trainer(job, queue, board)
    _ACTIVE_RUNS[job.run_id] = job.tracking_uri
    with ProgressFollower(queue, console, job.plan.max_iter, label=label) as progress, \
            PendingWatch(job, console, progress, label=label):
        try:
            trainer.fit()
        except Exception as exc:
            raise JobFailedError(f"training failed: {exc}") from exc
        finally:
            _ACTIVE_RUNS.pop(job.run_id, None)
            if board is not None:
                ray.kill(board)


@contextmanager
def ray_session(spec: JobSpec, *, verbose: bool = False) -> Iterator[None]:
    """Connect (embedded Ray, or the cluster of a Ray job's driver) for a block; reuses a
    connection that is already open (a sweep's), and then leaves it open."""
    if not os.environ.get("RAY_ADDRESS"):  # before Ray is imported (it reads them then)
        for key, value in EMBEDDED_ENV.items():
            os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        yield
        return
    _init_ray(spec, verbose)
    try:
        yield
    finally:
        with shielded():  # a second Ctrl-C must not leave Ray half shut down
            ray.shutdown()


def run_on_ray(job: WorkerJob, *, console: Console, verbose: bool = False,
               label: str = "") -> None:
    """Start Ray, train with one worker per ``resources.workers``, follow progress, shut down."""
    with ray_session(job.spec, verbose=verbose):
        fit(job, console=console, label=label)
