"""A panoptic test set makes the trainer evaluate PQ and mIoU beside box/mask AP, and the
metrics reach MLflow under detectron2's ``task/metric`` names.

The model is detectron2's own PanopticFPN (the same ``panoptic_seg`` convention as our
panoptic BlendMask, contract section 3), trained for 3 iterations on CPU: the BlendMask
panoptic branch is written in parallel and its end-to-end test belongs with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO

from orchestrator.data import synth
from orchestrator.data.panoptic import write_panoptic_png, write_semantic_maps
from tests.conftest import REPO

DEMO = REPO / "configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml"
STUFF = [{"id": 101, "name": "sky", "isthing": 0}, {"id": 102, "name": "ground", "isthing": 0}]


def _panoptic_files(split: Any, root: Path) -> tuple[Path, Path, Path]:
    """COCO panoptic json + PNGs and stuff maps for a synthetic split: the upper half of
    the background is sky, the lower half ground, each shape a thing segment."""
    coco = COCO(str(split.json_file))
    pngs, document = root / "panoptic", {"images": [], "annotations": [], "categories": []}
    pngs.mkdir(parents=True)
    document["categories"] = [{**c, "isthing": 1} for c in coco.loadCats(coco.getCatIds())]
    document["categories"] += STUFF
    for image in coco.loadImgs(coco.getImgIds()):
        ids = np.ones((image["height"], image["width"]), dtype=np.int32)
        ids[image["height"] // 2:] = 2
        segments = [{"id": 1, "category_id": 101, "iscrowd": 0},
                    {"id": 2, "category_id": 102, "iscrowd": 0}]
        for k, ann in enumerate(coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])), 3):
            ids[coco.annToMask(ann).astype(bool)] = k
            segments.append({"id": k, "category_id": ann["category_id"], "iscrowd": 0})
        present = set(np.unique(ids).tolist())
        name = f"{Path(image['file_name']).stem}.png"
        write_panoptic_png(pngs / name, ids)
        document["images"].append(image)
        document["annotations"].append({"image_id": image["id"], "file_name": name,
                                        "segments_info": [s for s in segments
                                                          if s["id"] in present]})
    panoptic_json = root / "panoptic.json"
    panoptic_json.write_text(json.dumps(document), encoding="utf-8")
    write_semantic_maps(panoptic_json, pngs, root / "stuff")
    return panoptic_json, pngs, root / "stuff"


def _register(name: str, split: Any, root: Path) -> None:
    """The split in the contract's "separated" form (section 1), in detectron2's catalogs."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    panoptic_json, pngs, stuff = _panoptic_files(split, root)
    by_image = {a["image_id"]: a["file_name"] for a in
                json.loads(panoptic_json.read_text(encoding="utf-8"))["annotations"]}

    def load() -> list[dict[str, Any]]:
        dicts = load_coco_json(str(split.json_file), str(split.image_root), name)
        return [{**d, "sem_seg_file_name": str(stuff / by_image[d["image_id"]])}
                for d in dicts]

    DatasetCatalog.register(name, load)
    ids = sorted(COCO(str(split.json_file)).getCatIds())
    MetadataCatalog.get(name).set(
        thing_classes=list(synth.CLASSES), thing_dataset_id_to_contiguous_id={
            d: i for i, d in enumerate(ids)},
        stuff_classes=["things", "sky", "ground"],
        stuff_dataset_id_to_contiguous_id={101: 1, 102: 2}, json_file=str(split.json_file),
        image_root=str(split.image_root), panoptic_root=str(pngs),
        panoptic_json=str(panoptic_json), sem_seg_root=str(stuff), ignore_label=255)


@pytest.fixture(scope="module")
def panoptic_shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("panoptic_trainer")
    data = synth.generate(root / "shapes", num_images=6, size=64, seed=0)
    names = ("trainer_panoptic_train", "trainer_panoptic_val")
    for name, split in zip(names, (data.train, data.val), strict=True):
        _register(name, split, root / name)
    return names


def _cfg(names: tuple[str, str], output_dir: Path) -> Any:
    """3 iterations of a PanopticFPN (the demo Mask R-CNN plus a semantic head) on CPU,
    evaluating after the 2nd and the 3rd."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(DEMO))
    cfg.MODEL.META_ARCHITECTURE = "PanopticFPN"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 3, 255
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, cfg.MODEL.SEM_SEG_HEAD.NORM = 32, "GN"
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 0  # 64 x 64 images: keep all stuff
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = names[:1], names[1:]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(synth.CLASSES)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 1, 0.01, 3
    cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS, cfg.TEST.EVAL_PERIOD = (), 0, 2
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST = (64,), 64
    cfg.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def test_build_evaluator_adds_panoptic_only_for_combining_models(
        panoptic_shapes: tuple[str, str], tmp_path: Path) -> None:
    from detectron2.evaluation import DatasetEvaluators

    from orchestrator.evaluation import ChunkedCOCOEvaluator
    from orchestrator.training.trainer import Trainer

    cfg = _cfg(panoptic_shapes, tmp_path)
    both = Trainer.build_evaluator(cfg, panoptic_shapes[1])
    assert isinstance(both, DatasetEvaluators) and isinstance(both.progress.total, int | None)
    cfg.MODEL.PANOPTIC_FPN.COMBINE.ENABLED = False
    assert isinstance(Trainer.build_evaluator(cfg, panoptic_shapes[1]), ChunkedCOCOEvaluator)


def test_pq_and_miou_reach_mlflow_beside_mask_ap(panoptic_shapes: tuple[str, str],
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from detectron2.data import DatasetCatalog
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking.run import RunTracker
    from orchestrator.tracking.writer import MLflowWriter
    from orchestrator.training.trainer import Trainer

    # The node's dataset cache reads the instances json alone (no sem_seg_file_name): the
    # catalog's own loader must run for the semantic head to get its targets.
    monkeypatch.setenv("ORCHESTRATOR_DATA_CACHE", "off")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker.create(tracking_uri=uri, experiment="pan", run_name="pan", tags={})
    (tmp_path / "out").mkdir()
    statuses: list[dict[str, Any]] = []
    writer = MLflowWriter(tracking_uri=uri, run_id=tracker.run_id, send_every_s=0)
    trainer = Trainer(_cfg(panoptic_shapes, tmp_path / "out"), extra_writers=[writer],
                      log_period=1, on_eval_progress=statuses.append)
    trainer.resume_or_load(resume=False)
    trainer.train()
    tracker.finish("FINISHED")

    phases = [s["phase"] for s in statuses]  # a slow machine adds inference reports (5 s)
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == \
        ["inference", "scoring", "done"] * 2
    assert statuses[-1]["done"] == len(DatasetCatalog.get(panoptic_shapes[1]))
    client = MlflowClient(tracking_uri=uri)
    steps = [m.step for m in client.get_metric_history(tracker.run_id, "segm/AP")]
    assert len(steps) == 2
    for key in ("panoptic_seg/PQ", "panoptic_seg/PQ_th", "panoptic_seg/SQ_st",
                "panoptic_seg/RQ", "sem_seg/mIoU", "sem_seg/mIoU_stuff"):
        history = client.get_metric_history(tracker.run_id, key)
        assert [m.step for m in history] == steps, key
        assert all(0 <= m.value <= 100 for m in history), key  # ground truth has segments
    results = trainer._last_eval_results
    assert set(results) == {"bbox", "segm", "panoptic_seg", "sem_seg"}
