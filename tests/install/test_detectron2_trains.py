"""The detectron2 we install (ours or upstream) must train, checkpoint and evaluate on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.data import synth
from tests.conftest import REPO


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> synth.SyntheticDataset:
    return synth.generate(tmp_path_factory.mktemp("d2") / "shapes", num_images=8, size=64, seed=3)


def test_default_trainer_trains_checkpoints_and_evaluates(
        shapes: synth.SyntheticDataset, tmp_path: Path) -> None:
    import torch
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator

    for split in (shapes.train, shapes.val):
        name = f"d2trains_{split.name}"
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, str(split.json_file), str(split.image_root))

    class Trainer(DefaultTrainer):  # type: ignore[misc]
        @classmethod
        def build_evaluator(cls, cfg, dataset_name):  # type: ignore[no-untyped-def]
            return COCOEvaluator(dataset_name, output_dir=str(tmp_path), use_fast_impl=False)

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml"))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("d2trains_train",), ("d2trains_val",)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(synth.CLASSES)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 2, 0.01, 4
    cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = (), 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST = (64,), 64
    cfg.OUTPUT_DIR = str(tmp_path)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    # The final evaluation's numbers, as EvalHook records them in the trainer's event storage.
    results = {key.split("/")[0] for key in trainer.storage.latest()}
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no weight changed"
    assert (tmp_path / "model_final.pth").is_file()
    assert {"bbox", "segm"} <= set(results)

    class Reloaded(Trainer):
        def build_writers(self):  # type: ignore[no-untyped-def]
            return []  # it never trains: opening metrics.json would leave it open

    reloaded = Reloaded(cfg)
    reloaded.resume_or_load(resume=True)
    assert reloaded.start_iter == cfg.SOLVER.MAX_ITER
