"""Rank 0's detectron2 ``EventWriter``s that send scalars to the driver's MLflow run.

``MLflowWriter`` writes what detectron2's ``JSONWriter`` writes to ``metrics.json`` (same names,
same smoothing), so MLflow and ``metrics.json`` agree. The step is not the iteration but the
iteration at the reference batch (``tracking.steps.StepAxis``), so runs with any worker count,
and runs whose batch changed on an elastic restart, share one axis; the real iteration and the
images seen go beside the losses as the metrics ``iteration`` and ``images_seen``.

Only the snapshot of the event storage happens on the training thread; every MLflow call (and
the system sampling) runs on one ``BackgroundSender`` thread, so a slow tracking store costs
training nothing. That thread still shares the GIL with training, so it is kept light: the
snapshots of several writes go to MLflow in one ``log_batch`` (every ``send_every_s``, each
value with its own step and time stamp), and the machine is sampled every ``every_s``. The
sender's queue is bounded (a stuck store slows training rather than filling memory), it keeps
the order things were queued in, and ``close()``/``flush()`` wait until all of it is sent:
detectron2's ``PeriodicWriter`` closes its writers in ``after_train``, which runs on success
and on failure alike.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from detectron2.utils.events import EventWriter, get_event_storage

from orchestrator.tracking.steps import StepAxis

__all__ = ["BackgroundSender", "MLflowWriter", "SystemMetricsWriter"]

logger = logging.getLogger(__name__)

_BATCH = 1000  # MLflow's log_batch limit for metrics
_STOP = object()

_Scalar = tuple[str, float, int, int]  # name, value, step, time stamp (ms)


class BackgroundSender:
    """Run queued calls one after another on a daemon thread, in the order they were queued.

    ``put`` blocks while ``maxsize`` calls are waiting (bounded memory, nothing dropped). A call
    that raises is retried ``retries`` times, then logged and skipped: losing one batch of
    metrics to a tracking-server outage must not stop training.
    """

    def __init__(self, *, maxsize: int = 1000, retries: int = 2, retry_wait_s: float = 0.5,
                 name: str = "tracking-sender") -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._retries = retries
        self._retry_wait = retry_wait_s
        self._closed = False
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    def pending(self) -> int:
        return self._queue.qsize()

    def put(self, call: Callable[[], Any]) -> None:
        if self._closed:
            raise RuntimeError("BackgroundSender is closed")
        self._queue.put(call)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued so far has been sent (or given up on); with
        ``timeout_s``, at most that long. Returns whether it all went."""
        if not self._thread.is_alive():
            return True
        if timeout_s is None:
            self._queue.join()
            return True
        done = threading.Event()
        self.put(done.set)  # runs after everything queued before it
        return done.wait(timeout_s)

    def close(self) -> None:
        """Flush, then stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            try:
                if call is _STOP:
                    return
                self._call(call)
            finally:
                self._queue.task_done()

    def _call(self, call: Callable[[], Any]) -> None:
        for attempt in range(self._retries + 1):
            try:
                call()
                return
            except Exception:  # noqa: BLE001 - a tracking failure must not reach training
                if attempt == self._retries:
                    self.failures += 1
                    logger.exception("tracking call failed %d times; skipped", attempt + 1)
                    return
                time.sleep(self._retry_wait * (attempt + 1))


class _SenderWriter(EventWriter):
    """An EventWriter whose MLflow work runs on a (possibly shared) ``BackgroundSender``."""

    def __init__(self, sender: BackgroundSender | None) -> None:
        self._owns_sender = sender is None
        self._sender = sender or BackgroundSender()

    def close(self) -> None:
        if self._owns_sender:
            self._sender.close()
        else:
            self._sender.flush()


class _Client:
    """An ``MlflowClient`` made on first use, on the sender thread: opening a sqlite store
    (schema check, migrations on a fresh one) then costs training nothing."""

    def __init__(self, tracking_uri: str) -> None:
        self._uri = tracking_uri
        self._client: Any = None

    def get(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self._uri)
        return self._client


class MLflowWriter(_SenderWriter):
    """Log new scalars (those at a step past the last one logged) to one run.

    Every write's snapshot is kept, with the time it was taken; they reach MLflow together,
    in order, once ``send_every_s`` has passed since the last send, and on ``close()``.

    With a batch below the reference batch several iterations share a step. MLflow cannot
    replace a value, so a value is held back until no later iteration can land on its step
    (the iteration in training has moved past it, or the writer closes): the last value of
    a step is the one logged, none is logged twice, and none is dropped before a later one
    of the same step replaced it. At or above the reference batch nothing waits.

    Args:
        axis: the step of an iteration; by default the iteration itself.
        sender: share one sender thread between writers; by default the writer has its own
            and stops it on ``close()``.
        send_every_s: 0 sends each write on its own.
    """

    def __init__(self, *, tracking_uri: str, run_id: str, window_size: int = 20,
                 axis: StepAxis | None = None, sender: BackgroundSender | None = None,
                 send_every_s: float = 5.0) -> None:
        super().__init__(sender)
        self._client = _Client(tracking_uri)
        self._run_id = run_id
        self._window = window_size
        self._axis = axis or StepAxis()
        self._send_every = send_every_s
        self._pending: list[_Scalar] = []
        self._held: dict[str, _Scalar] = {}
        self._sent_at = float("-inf")
        self._last_step: dict[str, int] | None = None
        # What training already produced in this run's history (a restart replays steps).
        self._sender.put(self._load_logged_steps)

    def _load_logged_steps(self) -> None:
        """Last step of every metric the run already has: after a restart from a checkpoint,
        replayed iterations are not logged twice (MLflow would keep both rows)."""
        client = self._client.get()
        keys = client.get_run(self._run_id).data.metrics
        self._last_step = {
            key: max(m.step for m in client.get_metric_history(self._run_id, key))
            for key in keys}

    def write(self) -> None:
        storage, now = get_event_storage(), int(time.time() * 1000)
        latest = storage.latest_with_smoothing_hint(self._window)
        for name, (value, iteration) in latest.items():
            self._hold(name, float(value), int(iteration), now)
        if latest:
            last = max(int(iteration) for _, iteration in latest.values())
            self._hold("iteration", float(last), last, now)
            self._hold("images_seen", float(self._axis.images_seen(last)), last, now)
        self._release(before=self._axis.step(storage.iter + 1))
        if time.monotonic() - self._sent_at >= self._send_every:
            self._put_pending()

    def _hold(self, name: str, value: float, iteration: int, timestamp: int) -> None:
        """Keep the newest value of ``name`` for its step; one of an earlier step is final."""
        step = self._axis.step(iteration)
        held = self._held.get(name)
        if held is not None and held[2] > step:  # an older value than the one held
            return
        if held is not None and held[2] < step:
            self._pending.append(held)
        self._held[name] = (name, value, step, timestamp)

    def _release(self, *, before: int | None = None) -> None:
        """Queue the held values at steps below ``before`` (all of them by default), which
        no iteration still to come can reach."""
        for name, held in list(self._held.items()):
            if before is None or held[2] < before:
                self._pending.append(held)
                del self._held[name]

    def flush(self, timeout_s: float = 30.0) -> None:
        """Send every final value now and wait until it is stored; values still held (a step
        the next iteration can land on) stay held. Before a checkpoint is reported: a group
        that Ray then kills (a resize, a lost node) resumes from that checkpoint, so what
        was trained before it must be in MLflow already, or those steps would be missing.
        A tracking store that does not answer holds training up for ``timeout_s`` at most."""
        self._put_pending()
        if not self._sender.flush(timeout_s):
            logger.warning("metrics not stored after %g s (the tracking store is slow or "
                           "down): a restart from this checkpoint may miss some", timeout_s)

    def close(self) -> None:
        self._release()
        self._put_pending()
        super().close()

    def _put_pending(self) -> None:
        pending, self._pending = self._pending, []
        self._sent_at = time.monotonic()
        if pending:
            self._sender.put(lambda: self._send(pending))

    def _send(self, scalars: list[_Scalar]) -> None:
        from mlflow.entities import Metric

        if self._last_step is None:  # the history could not be read: do not duplicate
            self._load_logged_steps()
        assert self._last_step is not None
        pending = []
        for name, value, step, timestamp in scalars:  # a value unchanged since the last write
            if step > self._last_step.get(name, -1):  # comes again with the same step
                pending.append(Metric(key=name, value=value, timestamp=timestamp, step=step))
                self._last_step[name] = step
        for start in range(0, len(pending), _BATCH):
            self._client.get().log_batch(self._run_id, metrics=pending[start:start + _BATCH])


class SystemMetricsWriter(_SenderWriter):
    """Rank 0's machine load, logged beside the losses so runs can be compared on cost too:
    ``system/cpu_percent``, ``system/memory_gb`` (this process tree's RSS), and with CUDA
    ``system/gpu_memory_gb`` / ``system/gpu_max_memory_gb`` (PyTorch's allocator).
    Sampled on the sender thread, at the time the iteration was written, once every
    ``every_s`` at most (the first write always samples), at the iteration's step on
    ``axis`` (the iteration by default)."""

    def __init__(self, *, tracking_uri: str, run_id: str, axis: StepAxis | None = None,
                 sender: BackgroundSender | None = None, every_s: float = 10.0) -> None:
        import psutil

        super().__init__(sender)
        self._client = _Client(tracking_uri)
        self._run_id = run_id
        self._every = every_s
        self._axis = axis or StepAxis()
        self._sampled_at = float("-inf")
        self._process = psutil.Process()
        self._process.cpu_percent()  # the first call only starts the measurement

    def sample(self) -> dict[str, float]:
        import torch

        rss = self._process.memory_info().rss
        for child in self._process.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except Exception:  # noqa: BLE001 - a child may exit while we look
                continue
        values = {"system/cpu_percent": self._process.cpu_percent(),
                  "system/memory_gb": rss / 2**30}
        if torch.cuda.is_available():
            values["system/gpu_memory_gb"] = torch.cuda.memory_allocated() / 2**30
            values["system/gpu_max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return values

    def write(self) -> None:
        if time.monotonic() - self._sampled_at < self._every:
            return
        self._sampled_at = time.monotonic()
        step, now = self._axis.step(get_event_storage().iter), int(time.time() * 1000)
        self._sender.put(lambda: self._send(step, now))

    def _send(self, step: int, timestamp: int) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(key=k, value=float(v), timestamp=timestamp, step=step)
                   for k, v in self.sample().items()]
        self._client.get().log_batch(self._run_id, metrics=metrics)
