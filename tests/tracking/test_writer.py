"""The background sender behind rank 0's writers: order kept, bounded, flushed on failure."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking.run import RunTracker
from orchestrator.tracking.steps import StepAxis
from orchestrator.tracking.writer import BackgroundSender, MLflowWriter, SystemMetricsWriter


def test_calls_run_in_the_order_they_were_queued() -> None:
    sender = BackgroundSender(maxsize=8)
    seen: list[int] = []
    for i in range(500):  # far more than maxsize: put waits, nothing is dropped
        sender.put(lambda i=i: seen.append(i))
    sender.close()
    assert seen == list(range(500))


def test_the_queue_is_bounded_and_put_waits_for_room() -> None:
    sender = BackgroundSender(maxsize=3)
    started, release = threading.Event(), threading.Event()

    def busy() -> None:
        started.set()
        release.wait()

    sender.put(busy)
    assert started.wait(timeout=30)  # the sender thread is now busy with this call
    for _ in range(3):
        sender.put(lambda: None)
    assert sender.pending() == 3
    blocked = threading.Thread(target=sender.put, args=(lambda: None,))
    blocked.start()
    blocked.join(timeout=0.5)
    assert blocked.is_alive() and sender.pending() == 3  # waits instead of growing
    release.set()
    blocked.join(timeout=5)
    assert not blocked.is_alive()
    sender.close()
    assert sender.pending() == 0


def test_a_bounded_flush_gives_up_on_a_stuck_store_and_the_calls_still_go_later() -> None:
    """A checkpoint flushes the metrics first: a tracking store that hangs must hold training
    up for the bound only, and nothing queued is lost for it."""
    sender = BackgroundSender()
    release, seen = threading.Event(), []
    sender.put(release.wait)  # a store that does not answer
    sender.put(lambda: seen.append("metrics"))
    assert sender.flush(timeout_s=0.2) is False and seen == []
    release.set()
    assert sender.flush(timeout_s=30) is True and seen == ["metrics"]
    sender.close()


def test_a_failing_call_is_retried_then_skipped_and_the_rest_still_sent() -> None:
    sender = BackgroundSender(retries=2, retry_wait_s=0.01)
    attempts: list[str] = []

    def flaky() -> None:
        attempts.append("flaky")
        raise OSError("store down")

    sender.put(flaky)
    sender.put(lambda: attempts.append("next"))
    sender.close()
    assert attempts == ["flaky"] * 3 + ["next"]
    assert sender.failures == 1
    with pytest.raises(RuntimeError, match="closed"):
        sender.put(lambda: None)


def test_training_that_fails_still_flushes_every_iteration_to_mlflow(store: str) -> None:
    """detectron2 closes its writers in ``after_train`` even when a step raises: everything
    queued before the failure reaches MLflow, in step order."""
    from detectron2.engine import HookBase, PeriodicWriter, TrainerBase

    uri = store
    tracker = RunTracker.create(tracking_uri=uri, experiment="f", run_name="f", tags={})
    sender = BackgroundSender(maxsize=4)
    slow = threading.Event()
    sender.put(lambda: slow.wait(0.5))  # a slow store: the queue is full while training runs

    class Toy(TrainerBase):
        def run_step(self) -> None:
            self.storage.put_scalar("total_loss", float(self.iter))

    class FailAt(HookBase):
        def after_step(self) -> None:
            if self.trainer.iter == 29:
                raise RuntimeError("injected failure")

    trainer = Toy()
    writer = MLflowWriter(tracking_uri=uri, run_id=tracker.run_id, window_size=1, sender=sender)
    trainer.register_hooks([PeriodicWriter([writer], period=1), FailAt()])
    with pytest.raises(RuntimeError, match="injected failure"):
        trainer.train(0, 100)
    sender.close()
    history = MlflowClient(tracking_uri=uri).get_metric_history(tracker.run_id, "total_loss")
    assert [m.step for m in history] == list(range(30))
    assert [m.value for m in history] == [float(i) for i in range(30)]
    tracker.finish("FAILED")


def test_writes_between_sends_reach_mlflow_together_each_with_its_own_time(store: str) -> None:
    """The sender thread shares the GIL with training: several writes go in one batch, yet
    every iteration is still logged once, at its own step and time stamp."""
    from detectron2.utils.events import EventStorage

    tracker = RunTracker.create(tracking_uri=store, experiment="b", run_name="b", tags={})
    sender = BackgroundSender()
    writer = MLflowWriter(tracking_uri=store, run_id=tracker.run_id, window_size=1,
                          sender=sender, send_every_s=3600)
    client = MlflowClient(tracking_uri=store)
    with EventStorage(start_iter=0) as storage:
        for it in range(5):
            storage.iter = it
            storage.put_scalar("total_loss", 10.0 - it)
            if it == 2:
                storage.put_scalar("segm/AP", 40.0)  # once: later writes repeat it at step 2
            writer.write()
            storage.step()
            time.sleep(0.01)
        sender.flush()
        assert [m.step for m in client.get_metric_history(tracker.run_id, "total_loss")] == [0]
        writer.close()
    history = client.get_metric_history(tracker.run_id, "total_loss")
    assert [(m.step, m.value) for m in history] == [(i, 10.0 - i) for i in range(5)]
    stamps = [m.timestamp for m in history]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5  # taken at each write
    assert [m.step for m in client.get_metric_history(tracker.run_id, "segm/AP")] == [2]
    sender.close()
    tracker.finish("FINISHED")


def test_flush_stores_every_final_step_at_once_and_keeps_the_held_one(store: str) -> None:
    """What a checkpoint report does first: a group killed after it (a resize, a lost node)
    resumes from the checkpoint, so the steps trained before it must be stored, whatever the
    send interval. The step the next iteration can still land on stays held."""
    from detectron2.utils.events import EventStorage

    tracker = RunTracker.create(tracking_uri=store, experiment="f", run_name="f", tags={})
    sender = BackgroundSender()
    writer = MLflowWriter(tracking_uri=store, run_id=tracker.run_id, window_size=1,
                          axis=StepAxis(batch=1, reference_batch=2), sender=sender,
                          send_every_s=3600)
    client = MlflowClient(tracking_uri=store)
    with EventStorage(start_iter=0) as storage:
        for it in range(5):  # iterations 2k and 2k+1 share step k
            storage.iter = it
            storage.put_scalar("total_loss", float(it))
            writer.write()
            storage.step()
            if it == 3:
                writer.flush()
                assert _points(client, tracker.run_id, "total_loss") == [(0, 1.0), (1, 3.0)]
        writer.flush()  # iteration 4's step 2 is not final: iteration 5 could replace it
        assert _points(client, tracker.run_id, "total_loss") == [(0, 1.0), (1, 3.0)]
        writer.close()
    assert _points(client, tracker.run_id, "total_loss") == [(0, 1.0), (1, 3.0), (2, 4.0)]
    sender.close()
    tracker.finish("FINISHED")


def _train_toy(store: str, axis: StepAxis, iters: int, *, period: int = 1,
               eval_at: int = -1) -> tuple[MlflowClient, str]:
    """A toy training of ``iters`` iterations written every ``period`` at ``axis``; an AP is
    put once, at ``eval_at``."""
    from detectron2.engine import PeriodicWriter, TrainerBase

    tracker = RunTracker.create(tracking_uri=store, experiment="a", run_name="a", tags={})

    class Toy(TrainerBase):
        def run_step(self) -> None:
            self.storage.put_scalar("total_loss", float(self.iter))
            if self.iter == eval_at:
                self.storage.put_scalar("segm/AP", 40.0, smoothing_hint=False)

    trainer = Toy()
    writer = MLflowWriter(tracking_uri=store, run_id=tracker.run_id, window_size=1, axis=axis)
    trainer.register_hooks([PeriodicWriter([writer], period=period)])
    trainer.train(0, iters)
    return MlflowClient(tracking_uri=store), tracker.run_id


def _points(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_below_the_reference_batch_each_step_gets_its_last_value(store: str) -> None:
    """Batch 1 at reference 2: iterations 2k and 2k+1 share step k; the later one's loss is
    logged there, once, and the real iteration goes beside it."""
    client, run_id = _train_toy(store, StepAxis(batch=1, reference_batch=2), 9, eval_at=4)
    assert _points(client, run_id, "total_loss") == [(k, 2.0 * k + 1) for k in range(4)] + [
        (4, 8.0)]  # the 9th iteration ends the run halfway through step 4: logged on close
    assert _points(client, run_id, "iteration") == [(k, 2.0 * k + 1) for k in range(4)] + [
        (4, 8.0)]
    assert _points(client, run_id, "images_seen")[-1] == (4, 9.0)
    # Put once at iteration 4 (not the last of step 2): held, then logged once, at step 2.
    assert _points(client, run_id, "segm/AP") == [(2, 40.0)]


def test_above_the_reference_batch_steps_jump(store: str) -> None:
    client, run_id = _train_toy(store, StepAxis(batch=4, reference_batch=2), 4, period=2)
    assert _points(client, run_id, "total_loss") == [(3, 1.0), (7, 3.0)]
    assert _points(client, run_id, "iteration") == [(3, 1.0), (7, 3.0)]


def test_system_metrics_are_sampled_once_per_period(store: str) -> None:
    from detectron2.utils.events import EventStorage

    tracker = RunTracker.create(tracking_uri=store, experiment="p", run_name="p", tags={})
    writer = SystemMetricsWriter(tracking_uri=store, run_id=tracker.run_id, every_s=3600)
    with EventStorage(start_iter=7) as storage:
        for it in (7, 8, 9):
            storage.iter = it
            writer.write()
    writer.close()
    history = MlflowClient(tracking_uri=store).get_metric_history(tracker.run_id,
                                                                  "system/memory_gb")
    assert [m.step for m in history] == [7]
    tracker.finish("FINISHED")
