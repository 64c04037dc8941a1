"""Just-in-time checkpoints: a node about to be preempted, or a SIGTERM to a worker.

Ray Train's own watcher sees the GCS drain a node for preemption (what an autoscaler asks when
a spot machine is reclaimed) and marks every worker; ``ray.train.get_preemption_info()`` tells
the training loop, as a barrier across ranks. A SIGTERM (a pod eviction, ``kill``) only sets a
flag: the loop sees it after the step in progress. Both are asked every
``run.preemption_check_every`` iterations, on every rank together, and both save through
``RayCheckpointHook.save_now``: the same storage and resume as the periodic checkpoints.

After a preemption checkpoint the ranks train no further and wait for the reclaim: Ray Train
restarts the group on what is left at the deadline (counted as a preemption, not a failure),
and nothing trained after the checkpoint is lost, because nothing was.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from detectron2.engine import HookBase
from detectron2.utils import comm

from orchestrator.training.hooks import RayCheckpointHook

__all__ = ["PreemptionHook", "WorkerTerminated", "due", "sigterm_received",
           "preemption_recorder"]

logger = logging.getLogger(__name__)

# Kubernetes gives an evicted pod 30 s between SIGTERM and SIGKILL by default: a checkpoint
# begun later than this after the signal would likely be cut off, so the worker just exits.
SIGTERM_BUDGET_S = 25.0
# How long after the deadline a rank keeps waiting for Ray Train to restart the group (it
# does so at the deadline, or 120 s after the notice without one) before failing on its own.
RECLAIM_PATIENCE_S = 180.0


class WorkerTerminated(RuntimeError):
    """Raised by every rank after a SIGTERM: Ray Train restarts the group (``run.max_failures``)
    from the checkpoint just saved."""


@dataclass
class _Sigterm:
    """This process's SIGTERM flag: set by the handler, read by the training thread."""

    at: float | None = None
    previous: Any = None
    installed: bool = False


_SIGTERM = _Sigterm()


def _on_sigterm(signum: int, frame: Any) -> None:
    """Only note the time: the training loop does the work after its step. A second SIGTERM
    goes to the handler that was there before (Ray's: exit), so a worker that cannot stop
    cleanly can still be stopped."""
    if _SIGTERM.at is None:
        _SIGTERM.at = time.monotonic()
        return
    previous = _SIGTERM.previous
    if callable(previous):
        previous(signum, frame)
    else:
        raise SystemExit(1)


def _set_handler(install: bool) -> None:
    """Install (or put back) the SIGTERM handler; Python allows this on the main thread only."""
    if install and not _SIGTERM.installed:
        _SIGTERM.previous = signal.signal(signal.SIGTERM, _on_sigterm)
        _SIGTERM.installed, _SIGTERM.at = True, None
    elif not install and _SIGTERM.installed:
        signal.signal(signal.SIGTERM, _SIGTERM.previous or signal.SIG_DFL)
        _SIGTERM.installed = False


def _set_handler_in_actor(actor: Any, install: bool) -> None:
    """``_set_handler`` as an actor task (``__ray_call__`` passes the actor first)."""
    _set_handler(install)


def _run_on_main_thread(install: bool) -> None:
    """Ray Train runs the training function on a thread of the worker actor, whose main thread
    serves the actor's tasks one at a time: an actor call to ourselves runs there."""
    if threading.current_thread() is threading.main_thread():
        _set_handler(install)
        return
    import ray

    try:
        actor = ray.get_runtime_context().current_actor
        ray.get(actor.__ray_call__.remote(_set_handler_in_actor, install), timeout=30)
    except Exception:  # noqa: BLE001 - no SIGTERM checkpoint is no reason to stop training
        logger.warning("SIGTERM handler not %s", "installed" if install else "removed",
                       exc_info=True)


def sigterm_received() -> float | None:
    """Seconds since this process got SIGTERM, or None."""
    return None if _SIGTERM.at is None else time.monotonic() - _SIGTERM.at


def due(done: int, every: int, max_iter: int) -> bool:
    """Whether to ask after ``done`` iterations: every ``every``, never after the last one
    (its checkpoint is written anyway and the run ends)."""
    return done < max_iter and done % every == 0


def _any_rank(flag: bool) -> bool:
    """True on every rank if it is true on one (a SIGTERM reaches one process)."""
    if comm.get_world_size() < 2:
        return flag
    return any(comm.all_gather(flag))


def preemption_recorder(tracking_uri: str, run_id: str) -> Callable[[Any, int], None]:
    """Rank 0's record of a preemption in the MLflow run: a tag naming the node(s) and the
    iteration saved, and ``preemption/iteration`` at that step (a mark on the charts)."""

    def record(info: Any, iteration: int) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        nodes = ", ".join(f"{node} (ranks {ranks})"
                          for node, ranks in sorted(info.preempted_node_to_ranks.items()))
        client.set_tag(run_id, f"preemption/iter_{iteration:07d}",
                       f"node {nodes}; checkpoint saved at iteration {iteration}")
        client.log_metric(run_id, "preemption/iteration", iteration, step=iteration)

    return record


class PreemptionHook(HookBase):
    """Every ``every`` iterations, all ranks ask together whether a node of the group is
    being preempted or a rank got SIGTERM, and save a checkpoint if so.

    Register it after ``RayCheckpointHook``: a periodic checkpoint of the same iteration is
    then not saved twice. ``asked_s`` keeps the seconds each ask took (the barrier's cost)."""

    def __init__(self, checkpoint: RayCheckpointHook, *, every: int,
                 record: Callable[[Any, int], None] | None = None,
                 flush: Callable[[], None] | None = None) -> None:
        self._checkpoint = checkpoint
        self._every = every
        self._record = record
        self._flush = flush  # rank 0's buffered metrics: the group is killed, not ended
        self.asked_s: list[float] = []

    def before_train(self) -> None:
        _run_on_main_thread(install=True)

    def after_train(self) -> None:
        _run_on_main_thread(install=False)
        if self.asked_s:
            logger.info("preemption checks: %d, %.2f ms each on average", len(self.asked_s),
                        1000 * sum(self.asked_s) / len(self.asked_s))

    def after_step(self) -> None:
        if not due(self.trainer.iter + 1, self._every, self.trainer.max_iter):
            return
        import ray.train

        start = time.perf_counter()
        terminated = _any_rank(sigterm_received() is not None)
        info = ray.train.get_preemption_info()
        self.asked_s.append(time.perf_counter() - start)
        if terminated:
            self._terminate()
        elif info is not None:
            self._preempted(info)

    def _preempted(self, info: Any) -> None:
        saved = self._checkpoint.save_now()
        logger.warning("preemption notice for node(s) %s (ranks %s, deadline in %s): "
                       "checkpoint at iteration %d; waiting for the reclaim",
                       ", ".join(info.preempted_node_ids), info.preempted_ranks,
                       _deadline_text(info.deadline_ms), saved)
        try:
            if self._record is not None and comm.is_main_process():
                self._record(info, saved)
            if self._flush is not None:
                self._flush()
        except Exception:  # noqa: BLE001 - the checkpoint matters, the metrics less
            logger.warning("could not record the preemption in MLflow", exc_info=True)
        _wait_for_reclaim(info.deadline_ms)

    def _terminate(self) -> None:
        since = sigterm_received()
        if since is None or since < SIGTERM_BUDGET_S:  # another rank's SIGTERM: time enough
            saved = self._checkpoint.save_now(wait_upload=True)
            logger.warning("SIGTERM: checkpoint at iteration %d saved; exiting", saved)
            time.sleep(2)  # let the controller take the report before it sees the error
            raise WorkerTerminated(f"SIGTERM: checkpoint at iteration {saved} saved")
        raise WorkerTerminated(f"SIGTERM {since:.0f} s ago: no time left for a checkpoint")


def _deadline_text(deadline_ms: int | None) -> str:
    if deadline_ms is None:
        return "unknown time"
    return f"{deadline_ms / 1000 - time.time():.0f} s"


def _wait_for_reclaim(deadline_ms: int | None) -> None:
    """Train no further: every iteration after the checkpoint would be trained again after
    the restart. Ray Train tears the group down at the deadline; if it never does, fail."""
    deadline = deadline_ms / 1000 if deadline_ms else time.time() + 120
    while time.time() < deadline + RECLAIM_PATIENCE_S:
        time.sleep(1)
    raise RuntimeError("preempted node's deadline passed long ago and the group still runs")
