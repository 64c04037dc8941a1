"""A failing evaluation never stops training; build_cfg carries the evaluation budget."""

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


def test_training_survives_failing_evaluations(shapes: tuple[str, str], tmp_path: Path) -> None:
    from detectron2.config import get_cfg

    from orchestrator.training.trainer import Trainer

    class FailingEvalTrainer(Trainer):
        @classmethod
        def build_evaluator(cls, cfg: Any, dataset_name: str) -> Any:
            return _FailingEvaluator()

    cfg = get_cfg()
    cfg.merge_from_file(str(DEMO))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = shapes[:1], shapes[1:]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(synth.CLASSES)
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 1, 0.01, 3
    cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS, cfg.TEST.EVAL_PERIOD = (), 0, 2
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST = (64,), 64
    cfg.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.OUTPUT_DIR = str(tmp_path)
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
