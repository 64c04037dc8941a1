"""The worker cfg: the plan, the data and the spec's eval settings land in detectron2's keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.job import WorkerJob
from orchestrator.launch.prepared import prepare
from orchestrator.spec import parse_spec
from orchestrator.training.config import build_cfg
from tests.conftest import REPO, TINY_JOB


def job_for(workdir: Path, *overrides: str) -> WorkerJob:
    spec = parse_spec(yaml.safe_load(TINY_JOB), overrides=list(overrides))
    prepared = prepare(spec, workdir=workdir)
    return WorkerJob(spec=prepared.spec, plan=prepared.plan, data=prepared.data,
                     config_file=str(prepared.config_file), output_dir=str(workdir / "out"),
                     run_id="r", tracking_uri="sqlite:///x.db")


def test_plan_and_data_reach_the_cfg(workdir: Path) -> None:
    job = job_for(workdir, "solver.max_iter=40", "solver.steps=[0.5]", "eval.max_dets=7",
                  "eval.score_thresh=0.3", "eval.chunk_bytes=1000")
    cfg = build_cfg(job, "cpu")
    assert cfg.is_frozen()
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS) == (2, 40, (20,))
    assert cfg.SOLVER.BASE_LR == pytest.approx(job.plan.base_lr)
    assert cfg.SOLVER.REFERENCE_WORLD_SIZE == 0  # never scaled twice
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 4
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.3
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 7
    assert cfg.DATASETS.TRAIN == (job.data.train.name,)
    assert job.data.test is not None and cfg.DATASETS.TEST == (job.data.test.name,)
    assert cfg.ORCHESTRATOR.EVAL_CHUNK_BYTES == 1000
    assert (cfg.MODEL.DEVICE, cfg.OUTPUT_DIR) == ("cpu", str(workdir / "out"))


def test_fcos_models_get_their_own_keys(workdir: Path) -> None:
    job = job_for(workdir, "model.arch=condinst", "eval.max_dets=9", "eval.score_thresh=0.2",
                  f"model.config={REPO}/configs/condinst/condinst_R_18_demo.yaml")
    cfg = build_cfg(job, "cpu")
    assert cfg.MODEL.META_ARCHITECTURE == "CondInst"
    assert cfg.MODEL.FCOS.NUM_CLASSES == 4
    assert cfg.MODEL.FCOS.INFERENCE_TH_TEST == 0.2
    assert cfg.MODEL.FCOS.POST_NMS_TOPK_TEST == 9


def test_disabled_evaluation_has_no_test_set(workdir: Path) -> None:
    cfg = build_cfg(job_for(workdir, "eval.enabled=false"), "cpu")
    assert cfg.DATASETS.TEST == ()
    assert cfg.TEST.EVAL_PERIOD == 0


def test_loader_workers_follow_the_cpus_of_a_worker_unless_set(workdir: Path) -> None:
    assert build_cfg(job_for(workdir), "cpu").DATALOADER.NUM_WORKERS == 0  # 1 CPU: in-process
    cfg = build_cfg(job_for(workdir, "resources.cpus_per_worker=4.5"), "cpu")
    assert cfg.DATALOADER.NUM_WORKERS == 3  # one CPU stays with the training process
    cfg = build_cfg(job_for(workdir, "resources.cpus_per_worker=4",
                            "model.opts=[DATALOADER.NUM_WORKERS, 1]"), "cpu")
    assert cfg.DATALOADER.NUM_WORKERS == 1  # set in the spec: kept
