"""``orchestrator submit`` for real: local Ray, 2 gloo workers, detectron2, a sqlite MLflow."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import TINY_JOB, write_spec

runner = CliRunner()


def only_run(workdir: Path):  # type: ignore[no-untyped-def]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return client, runs[0]


def test_two_workers_train_and_mlflow_records_everything(workdir: Path) -> None:
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = runner.invoke(app, ["submit", str(job), "run.env={ORCHESTRATOR_PROBE: probe-7f3a}"])
    assert result.exit_code == 0, result.output
    client, run = only_run(workdir)
    assert run.info.status == "FINISHED"
    assert f"MLflow run id: {run.info.run_id}" in result.output
    assert "iter 6/6" in result.output  # progress reached the end
    params = run.data.params
    assert (params["workers"], params["total_batch"], params["max_iter"]) == ("2", "2", "6")
    assert params["backend"] == "gloo" and float(params["base_lr"]) == pytest.approx(0.01)
    assert params["spec.model.arch"] == "mask_rcnn"
    assert run.data.tags["model"] == "mask_rcnn" and run.data.tags["workers"] == "2"
    assert run.data.tags["data_check"] == "passed"
    history = client.get_metric_history(run.info.run_id, "total_loss")
    steps = [m.step for m in history]
    assert steps == sorted(set(steps)) and steps[-1] == 5 and len(steps) >= 3
    for name in ("loss_cls", "loss_mask", "lr", "time", "bbox/AP", "segm/AP", "eval/seconds",
                 "eval/scoring_seconds"):
        assert name in run.data.metrics, name
    assert "eval took" in result.output  # the final evaluation's cost, on the progress line
    artifacts = workdir / "mlruns" / run.info.run_id / "artifacts"
    for name in ("job.yaml", "config.yaml", "metrics.json", "evaluation.json",
                 "checkpoints/model_final.pth"):
        assert (artifacts / name).is_file(), name
    evaluation = (artifacts / "evaluation.json").read_text()
    assert "NaN" not in evaluation and "Infinity" not in evaluation
    assert "segm" in json.loads(evaluation)
    assert "segm/AP" in result.output
    assert "system/memory_gb" in run.data.metrics
    worker_log = next((workdir / ".orchestrator" / "output").glob("*/log.txt.rank1")).read_text()
    assert "run.env ORCHESTRATOR_PROBE is set" in worker_log  # reached every worker
    startup = re.search(r"worker start-up took ([\d.]+) s: process ([\d.]+) s, imports ([\d.]+) s",
                        worker_log)
    assert startup, worker_log  # the phases are rounded to 0.1 s each
    assert float(startup.group(1)) + 0.1 >= float(startup.group(2)) + float(startup.group(3))
    assert "probe-7f3a" not in worker_log and params["spec.run.env.ORCHESTRATOR_PROBE"] == "****"
    # One checkpoint write per period: Ray's (uploaded asynchronously, the staged copy gone);
    # detectron2's own periodic checkpointer writes nothing beside it.
    output = next((workdir / ".orchestrator" / "output").glob("tiny-*"))
    assert sorted(p.name for p in output.rglob("model*.pth")) == ["model_final.pth"]
    stored = list((workdir / ".orchestrator" / "ray").glob("*/iter_0000005/model.pth"))
    assert len(stored) == 1 and stored[0].stat().st_size == (output / "model_final.pth").stat(
        ).st_size
    assert "training blocked" in (output / "log.txt").read_text()
    assert not list(output.glob("checkpoint-staging/*"))


def test_worker_failure_marks_the_run_failed(workdir: Path) -> None:
    """A config the driver accepts (pre-flight merges cfg and builds the model) that fails
    only when a worker builds its data loader."""
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = runner.invoke(app, ["submit", str(job), "resources.workers=1",
                                 "model.opts=[DATALOADER.SAMPLER_TRAIN, NoSuchSampler]"])
    assert result.exit_code == 1, result.output
    assert "training failed" in result.output and "NoSuchSampler" in result.output
    assert only_run(workdir)[1].info.status == "FAILED"


def test_ray_start_failure_exits_1_and_marks_the_run_failed(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = workdir / "not-a-dir"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("RAY_TMPDIR", str(blocker / "ray"))
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = runner.invoke(app, ["submit", str(job)])
    assert result.exit_code == 1, result.output
    assert "could not start the embedded Ray" in result.output
    assert only_run(workdir)[1].info.status == "FAILED"


def test_a_dataset_repaired_by_data_check_trains(workdir: Path) -> None:
    """The SizeMismatchError case end to end: refused before Ray starts, fixed, trained."""
    import json

    from orchestrator.data import synth

    made = synth.generate(workdir / "shapes", num_images=8, size=64, seed=2)
    doc = json.loads(made.train.json_file.read_text(encoding="utf-8"))
    doc["images"][0]["width"], doc["images"][1]["height"] = 640, 480  # wrong sizes
    broken = workdir / "broken.json"
    broken.write_text(json.dumps(doc), encoding="utf-8")
    spec = TINY_JOB.replace(
        "synthetic: {num_images: 12, size: 64, seed: 1}",
        f"train: {{json_file: {broken}, image_root: {made.train.image_root}}}")
    job = write_spec(workdir / "job.yaml", spec)
    overrides = ["resources.workers=1", "solver.max_iter=2", "eval.enabled=false"]
    refused = runner.invoke(app, ["submit", str(job), *overrides])
    assert refused.exit_code == 2 and "data check failed" in refused.output
    fixed = workdir / "fixed.json"
    repair = runner.invoke(app, ["data", "check", str(broken), "--images",
                                 str(made.train.image_root), "--fix", str(fixed)])
    assert repair.exit_code == 0, repair.output
    trained = runner.invoke(app, ["submit", str(job), *overrides,
                                  f"data.train.json_file={fixed}"])
    assert trained.exit_code == 0, trained.output
    assert only_run(workdir)[1].info.status == "FINISHED"
