"""The panoptic demo job end to end on the embedded default, tiny: train (``loss_sem_seg``
logged), evaluate (PQ and mIoU in MLflow beside AP), and ``predict`` exporting COCO panoptic
files that detectron2's reader and our check accept."""

from __future__ import annotations

import json
import math
from pathlib import Path

from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.data.panoptic import check_panoptic
from tests.conftest import REPO

runner = CliRunner()
TINY = ["resources.workers=1", "solver.max_iter=4", "solver.warmup_iters=1",
        "solver.steps=[]", "data.synthetic.num_images=8", "data.synthetic.size=64",
        "eval.score_thresh=0.0", "tracking.log_period=1", "tracking.run_name=tiny-panoptic"]
PANOPTIC_METRICS = {f"panoptic_seg/{m}{part}" for m in ("PQ", "SQ", "RQ")
                    for part in ("", "_th", "_st")}


def test_panoptic_demo_trains_evaluates_and_predicts(workdir: Path, tmp_path: Path) -> None:
    job = str(REPO / "jobs" / "demo-blendmask-panoptic.yaml")
    result = runner.invoke(app, ["submit", job, *TINY])
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.status == "FINISHED"
    losses = client.get_metric_history(run.info.run_id, "loss_sem_seg")
    assert losses and all(math.isfinite(m.value) and m.value > 0 for m in losses)
    assert PANOPTIC_METRICS | {"sem_seg/mIoU", "segm/AP", "bbox/AP"} <= set(run.data.metrics)
    assert 0.0 <= run.data.metrics["panoptic_seg/PQ"] <= 100.0
    stuff = json.loads((workdir / "mlruns" / run.info.run_id / "artifacts"
                        / "stuff_classes.json").read_text(encoding="utf-8"))
    assert stuff == ["sky", "grass", "water"]

    val = next((workdir / ".orchestrator" / "datasets").glob("*stuff3/val"))
    out = tmp_path / "pred"
    predicted = runner.invoke(app, ["predict", "--tracking-uri", uri, "--run",
                                    run.info.run_id, str(val), "--out", str(out),
                                    "--score", "0.0"])
    assert predicted.exit_code == 0, predicted.output
    assert "COCO panoptic format" in predicted.output.replace("\n", "")
    assert check_panoptic(out / "panoptic.json", out / "panoptic") == []
    document = json.loads((out / "panoptic.json").read_text(encoding="utf-8"))
    names = {c["name"] for c in document["categories"] if not c["isthing"]}
    assert names == set(stuff)
    meta = {"thing_dataset_id_to_contiguous_id": {c["id"]: c["id"] for c in
                                                   document["categories"] if c["isthing"]},
            "stuff_dataset_id_to_contiguous_id": {c["id"]: c["id"] for c in
                                                   document["categories"]
                                                   if not c["isthing"]}}
    jpgs = tmp_path / "jpg"  # detectron2's reader looks for COCO's <stem>.jpg images
    jpgs.mkdir()
    for png in val.glob("*.png"):
        (jpgs / f"{png.stem}.jpg").symlink_to(png)
    records = load_coco_panoptic_json(str(out / "panoptic.json"), str(jpgs),
                                      str(out / "panoptic"), meta)
    assert len(records) == len(list(val.glob("*.png"))) >= 1
    assert any(s["category_id"] in meta["stuff_dataset_id_to_contiguous_id"]
               for r in records for s in r["segments_info"]), "stuff segments exported"
