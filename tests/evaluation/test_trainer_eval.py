"""A failing evaluation never stops training; an evaluation reports progress and logs what it
cost to MLflow; build_cfg carries the evaluation budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.data import synth
from orchestrator.data.catalog import ResolvedData, ResolvedDataset
from orchestrator.job import WorkerJob
from orchestrator.plan import make_plan
from orchestrator.spec import parse_spec
from orchestrator.training.config import build_cfg
from tests.conftest import REPO, TINY_JOB

DEMO = REPO / "configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml"


class _FailingEvaluator:
    """A DatasetEvaluator whose every evaluation dies, as an OOM or a bad dataset would."""

    def reset(self) -> None:
        pass

    def process(self, inputs: Any, outputs: Any) -> None:
        raise RuntimeError("injected evaluation failure")

    def evaluate(self) -> dict[str, Any]:
        return {}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    data = synth.generate(tmp_path_factory.mktemp("trainer") / "shapes", num_images=6,
                          size=64, seed=0)
    names = ("trainer_eval_train", "trainer_eval_val")
    for name, split in zip(names, (data.train, data.val), strict=True):
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, str(split.json_file), str(split.image_root))
    return names


def _cfg(shapes: tuple[str, str], output_dir: Path) -> Any:
    """3 iterations of the demo Mask R-CNN on CPU, evaluating after the 2nd and the 3rd."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(DEMO))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = shapes[:1], shapes[1:]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(synth.CLASSES)
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 1, 0.01, 3
    cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS, cfg.TEST.EVAL_PERIOD = (), 0, 2
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST = (64,), 64
    cfg.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def test_training_survives_failing_evaluations(shapes: tuple[str, str], tmp_path: Path) -> None:
    from orchestrator.training.trainer import Trainer

    class FailingEvalTrainer(Trainer):
        @classmethod
        def build_evaluator(cls, cfg: Any, dataset_name: str) -> Any:
            return _FailingEvaluator()

    cfg = _cfg(shapes, tmp_path)
    errors: list[tuple[Exception, str]] = []

    def on_eval_error(error: Exception, text: str) -> None:
        errors.append((error, text))
        if len(errors) == 1:
            raise OSError("tracking server unreachable")  # reporting may fail too

    trainer = FailingEvalTrainer(cfg, on_eval_error=on_eval_error, log_period=1)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER  # detectron2's mark of a finished training
    assert len(errors) == 2  # the periodic evaluation at iteration 2 and the final one
    assert all("injected evaluation failure" in text for _, text in errors)
    assert (tmp_path / "model_final.pth").is_file()
    assert trainer.model.training  # detectron2 leaves it in eval mode after a failed inference
    assert not hasattr(trainer, "_last_eval_results")


def test_evaluation_progress_is_reported_and_its_seconds_reach_mlflow(
        shapes: tuple[str, str], tmp_path: Path) -> None:
    from detectron2.data import DatasetCatalog
    from mlflow.tracking import MlflowClient

    from orchestrator.launch.progress import format_record
    from orchestrator.tracking.run import RunTracker
    from orchestrator.tracking.writer import MLflowWriter
    from orchestrator.training.trainer import Trainer

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker.create(tracking_uri=uri, experiment="eval", run_name="eval", tags={})
    cfg = _cfg(shapes, tmp_path / "out")
    (tmp_path / "out").mkdir()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # an untrained model's detections, to score
    statuses: list[dict[str, Any]] = []
    writer = MLflowWriter(tracking_uri=uri, run_id=tracker.run_id, send_every_s=0)
    trainer = Trainer(cfg, extra_writers=[writer], log_period=1,
                      on_eval_progress=statuses.append)
    trainer.resume_or_load(resume=False)
    trainer.train()
    tracker.finish("FINISHED")

    images = len(DatasetCatalog.get(shapes[1]))
    assert [s["phase"] for s in statuses] == ["inference", "scoring", "done"] * 2
    assert statuses[0]["done"] == 0 and statuses[0]["total"] == images
    done = statuses[-1]
    assert done["done"] == images and 0 < done["scoring_seconds"] < done["seconds"]
    assert "eval took" in format_record({"iter": 3, "max_iter": 3, "eval": done})
    client = MlflowClient(tracking_uri=uri)
    seconds = client.get_metric_history(tracker.run_id, "eval/seconds")
    scoring = client.get_metric_history(tracker.run_id, "eval/scoring_seconds")
    scores = client.get_metric_history(tracker.run_id, "segm/AP")
    # One value per evaluation (after iteration 2 and the final one), beside its scores.
    assert len(seconds) == 2
    assert [m.step for m in seconds] == [m.step for m in scoring] == [m.step for m in scores]
    assert all(0 < s.value < t.value for s, t in zip(scoring, seconds, strict=True))


def test_build_cfg_carries_the_evaluation_budget(tmp_path: Path) -> None:
    spec = parse_spec(yaml.safe_load(TINY_JOB),
                      overrides=["eval.chunk_bytes=1234", "eval.cpu_fallback=false"])
    dataset = ResolvedDataset(name="unused", json_file="unused", image_root="unused")
    job = WorkerJob(spec=spec, plan=make_plan(spec), config_file=str(DEMO),
                    data=ResolvedData(train=dataset, test=None, usable_images=None,
                                      class_names=synth.CLASSES),
                    output_dir=str(tmp_path), run_id="run", tracking_uri="sqlite:///unused.db")
    cfg = build_cfg(job, "cpu")
    assert cfg.ORCHESTRATOR.EVAL_CHUNK_BYTES == 1234
    assert cfg.ORCHESTRATOR.EVAL_CPU_FALLBACK is False
    assert cfg.MODEL.RESNETS.DEPTH == 18  # the model file still merged
