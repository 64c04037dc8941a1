from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.tracking.run import RunTracker, default_tracking_uri, flatten
from orchestrator.tracking.writer import MLflowWriter


def test_flatten_nested_values() -> None:
    tree = {"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x" * 7000}
    flat = flatten(tree, "spec.")
    assert flat["spec.a.b"] == "1"
    assert flat["spec.a.c"] == "[1, 2]"
    assert flat["spec.d"] == ""
    assert len(flat["spec.e"]) == 6000


def test_run_lifecycle_in_a_sqlite_store(workdir: Path) -> None:
    uri = default_tracking_uri()
    assert uri == f"sqlite:///{workdir / 'mlflow.db'}"
    tracker = RunTracker.create(tracking_uri=uri, experiment="exp", run_name="r1",
                                tags={"model": "mask_rcnn"})
    tracker.log_params({f"p{i}": str(i) for i in range(250)})  # more than one batch
    tracker.log_text("a: 1\n", "job.yaml")
    assert tracker.status() == "RUNNING"
    tracker.finish("KILLED")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "KILLED"
    assert run.data.params["p249"] == "249"
    assert run.data.tags["model"] == "mask_rcnn"
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (workdir / "mlruns").as_uri()
    assert (workdir / "mlruns" / tracker.run_id / "artifacts" / "job.yaml").is_file()
    again = RunTracker.create(tracking_uri=uri, experiment="exp", run_name="r2", tags={})
    assert again.experiment_id == tracker.experiment_id
    again.finish("FINISHED")


def test_writer_logs_scalars_with_iterations_once(workdir: Path) -> None:
    from detectron2.utils.events import EventStorage

    uri = default_tracking_uri()
    tracker = RunTracker.create(tracking_uri=uri, experiment="w", run_name="w", tags={})
    writer = MLflowWriter(tracking_uri=uri, run_id=tracker.run_id, window_size=1)
    with EventStorage(start_iter=0) as storage:
        for it in range(5):
            storage.iter = it
            storage.put_scalar("loss_cls", float(it))
            if it in (1, 3):
                writer.write()
        storage.put_scalar("segm/AP", 12.5, smoothing_hint=False)
        writer.write()
        writer.write()  # nothing new: nothing logged twice
    writer.close()  # MLflow calls run on the writer's thread: wait for them
    client = MlflowClient(tracking_uri=uri)
    steps = [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss_cls")]
    assert steps == [(1, 1.0), (3, 3.0), (4, 4.0)]
    ap = client.get_metric_history(tracker.run_id, "segm/AP")
    assert [(m.step, m.value) for m in ap] == [(4, 12.5)]
    tracker.finish("FINISHED")


def test_a_restarted_writer_does_not_log_replayed_steps_again(workdir: Path) -> None:
    """The first attempt logs 0-3 and dies; the restart resumes from the iteration-1
    checkpoint, so iterations 2-3 replay: they must not be logged twice."""
    from detectron2.utils.events import EventStorage

    uri = default_tracking_uri()
    tracker = RunTracker.create(tracking_uri=uri, experiment="w", run_name="r", tags={})
    for attempt in (range(0, 4), range(2, 8)):
        writer = MLflowWriter(tracking_uri=uri, run_id=tracker.run_id, window_size=1)
        with EventStorage(start_iter=attempt.start) as storage:
            for it in attempt:
                storage.iter = it
                storage.put_scalar("total_loss", float(it))
                writer.write()
        writer.close()
    client = MlflowClient(tracking_uri=uri)
    steps = [m.step for m in client.get_metric_history(tracker.run_id, "total_loss")]
    assert steps == list(range(8))
    tracker.finish("FINISHED")


def test_system_metrics_are_logged_at_the_iteration(workdir: Path) -> None:
    from detectron2.utils.events import EventStorage

    from orchestrator.tracking.writer import SystemMetricsWriter

    uri = default_tracking_uri()
    tracker = RunTracker.create(tracking_uri=uri, experiment="s", run_name="s", tags={})
    writer = SystemMetricsWriter(tracking_uri=uri, run_id=tracker.run_id)
    with EventStorage(start_iter=7) as storage:
        storage.iter = 7
        sum(i * i for i in range(200_000))  # some CPU time to measure
        writer.write()
    writer.close()
    metrics = MlflowClient(tracking_uri=uri).get_run(tracker.run_id).data.metrics
    assert 0.05 < metrics["system/memory_gb"] < 64
    assert metrics["system/cpu_percent"] >= 0
    history = MlflowClient(tracking_uri=uri).get_metric_history(tracker.run_id,
                                                                "system/memory_gb")
    assert [m.step for m in history] == [7]
    tracker.finish("FINISHED")
