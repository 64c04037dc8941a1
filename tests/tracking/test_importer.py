"""Imported reference logs become FINISHED runs that line up with ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.errors import InputError
from orchestrator.tracking.importer import default_run_name, guess_model, import_log
from tests.tracking.conftest import D2_LOG, MMDET_LOG, Populated


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=uri)
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_detectron2_import_keeps_values_at_their_iterations(populated: Populated) -> None:
    run = MlflowClient(tracking_uri=populated.uri).get_run(populated.d2)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "detectron2_mask_rcnn_R_50_FPN_1x"
    assert run.data.metrics["segm/AP"] == pytest.approx(35.24, abs=0.005)
    assert run.data.metrics["bbox/AP"] == pytest.approx(38.65, abs=0.005)
    assert history(populated.uri, populated.d2, "segm/AP")[-1][0] == 89999
    assert run.data.params["source_format"] == "detectron2"
    assert run.data.params["source_file"] == str(D2_LOG)
    assert run.data.tags["imported"] == "true"
    assert run.data.tags["model"] == "mask_rcnn"


def test_mmdet_import_maps_names_units_steps_and_environment(populated: Populated) -> None:
    run = MlflowClient(tracking_uri=populated.uri).get_run(populated.mmdet)
    assert run.info.status == "FINISHED"
    # At batch 16 (the default reference, assumed for the log) the step is the 0-based
    # iteration: MMDetection's iter counts iterations done.
    assert history(populated.uri, populated.mmdet, "segm/AP") == [(6 * 7330 - 1, 28.3)]
    assert history(populated.uri, populated.mmdet, "loss_box_reg")[-1] == (11 * 7330 + 7299,
                                                                           0.22557)
    assert run.data.params["total_batch"] == "16"
    assert run.data.params["total_batch_source"] == "assumed: the reference batch"
    assert run.data.metrics["mmdet/acc"] == pytest.approx(93.0603)
    assert run.data.params["iters_per_epoch"] == "7330"
    assert run.data.tags["env.MMDetection"] == "1.0rc1+d1c761c"
    assert run.data.tags["source_format"] == "mmdetection"
    assert run.info.experiment_id == populated.experiment_id  # beside our own runs


def test_import_logs_more_than_one_batch_and_the_source(store: str, workdir: Path) -> None:
    log = workdir / "run.metrics.json"
    log.write_text("".join(json.dumps({"iteration": i, "total_loss": 1 / (i + 1), "lr": 0.01})
                           + "\n" for i in range(700)), encoding="utf-8")  # 1400 points
    run_id = import_log(log, tracking_uri=store, experiment="e", run_name="mine")
    assert len(history(store, run_id, "total_loss")) == 700
    assert MlflowClient(tracking_uri=store).get_run(run_id).info.run_name == "mine"
    assert (workdir / "mlruns" / run_id / "artifacts" / "source" / log.name).is_file()


def test_import_of_a_missing_file_says_so(store: str, workdir: Path) -> None:
    with pytest.raises(InputError, match="nope.json: no such file"):
        import_log(workdir / "nope.json", tracking_uri=store, experiment="e")


def test_names_from_files() -> None:
    assert default_run_name(MMDET_LOG) == "mmdet_mask_rcnn_r50_fpn_1x"
    assert guess_model(Path("condinst-MS_R_50.json")) == "condinst"
    assert guess_model(Path("x.json")) == "unknown"


def _small_log(folder: Path, iterations: range) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "metrics.json"
    log.write_text("".join(json.dumps({"iteration": i, "total_loss": float(i)}) + "\n"
                           for i in iterations), encoding="utf-8")
    return log


def test_a_detectron2_log_lands_on_the_reference_axis_with_its_config_batch(
        store: str, workdir: Path) -> None:
    """config.yaml beside metrics.json (detectron2's output folder) gives the batch: 4 images
    per iteration at reference 8 makes two iterations a step, the later one's value kept."""
    log = _small_log(workdir / "out", range(1, 12, 2))  # logged every 2nd iteration
    (workdir / "out" / "config.yaml").write_text("SOLVER:\n  IMS_PER_BATCH: 4\n",
                                                 encoding="utf-8")
    run_id = import_log(log, tracking_uri=store, experiment="e", reference_batch=8)
    assert history(store, run_id, "total_loss") == [(k, 2.0 * k + 1) for k in range(6)]
    assert history(store, run_id, "iteration") == [(k, 2.0 * k + 1) for k in range(6)]
    params = MlflowClient(tracking_uri=store).get_run(run_id).data.params
    assert params["total_batch"] == "4" and params["reference_batch"] == "8"
    assert params["total_batch_source"].endswith("config.yaml")


def test_the_batch_option_wins_and_several_iterations_per_step_keep_the_last(
        store: str, workdir: Path) -> None:
    log = _small_log(workdir / "o", range(8))
    run_id = import_log(log, tracking_uri=store, experiment="e", batch=2, reference_batch=4)
    assert history(store, run_id, "total_loss") == [(0, 1.0), (1, 3.0), (2, 5.0), (3, 7.0)]
    with pytest.raises(InputError, match="--batch must be positive"):
        import_log(log, tracking_uri=store, experiment="e", batch=0)
