"""Build the worker's detectron2 cfg: model config + opts, then the plan, data and device."""

from __future__ import annotations

import math

from detectron2.config import CfgNode, get_cfg

from orchestrator.data.panoptic import IGNORE_LABEL
from orchestrator.evaluation.postprocess import DEFAULT_CHUNK_BYTES
from orchestrator.job import WorkerJob
from orchestrator.models.arch import get_arch

__all__ = ["build_cfg", "apply_plan", "loader_workers", "set_dotted"]


def set_dotted(cfg: CfgNode, dotted: str, value: object) -> None:
    """``set_dotted(cfg, "MODEL.FCOS.NUM_CLASSES", 3)``: arch tables name keys as dotted paths."""
    node = cfg
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value


def apply_plan(cfg: CfgNode, job: WorkerJob) -> None:
    """Solver numbers come from the plan only; detectron2's own rescaling is switched off."""
    plan, solver = job.plan, job.spec.solver
    cfg.SOLVER.IMS_PER_BATCH = plan.total_batch
    cfg.SOLVER.BASE_LR = plan.base_lr
    cfg.SOLVER.MAX_ITER = plan.max_iter
    cfg.SOLVER.STEPS = plan.steps
    cfg.SOLVER.GAMMA = solver.gamma
    cfg.SOLVER.WARMUP_ITERS = plan.warmup_iters
    cfg.SOLVER.WARMUP_FACTOR = solver.warmup_factor
    cfg.SOLVER.WEIGHT_DECAY = solver.weight_decay
    cfg.SOLVER.MOMENTUM = solver.momentum
    cfg.SOLVER.CHECKPOINT_PERIOD = plan.checkpoint_period
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = solver.clip_gradients > 0
    if solver.clip_gradients > 0:
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = solver.clip_gradients
    cfg.TEST.EVAL_PERIOD = plan.eval_period


def _apply_data(cfg: CfgNode, job: WorkerJob) -> None:
    cfg.DATASETS.TRAIN = (job.data.train.name,)
    test = job.data.test if job.spec.eval.enabled else None
    cfg.DATASETS.TEST = (test.name,) if test else ()
    arch = get_arch(job.spec.model.arch)
    if job.data.class_names:
        for key in arch.num_classes_keys:
            set_dotted(cfg, key, len(job.data.class_names))
    if job.data.stuff_names:  # panoptic data: "things" is semantic class 0, stuff 1..S
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = len(job.data.stuff_names) + 1
        cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = IGNORE_LABEL
    for key in arch.score_thresh_keys:
        set_dotted(cfg, key, job.spec.eval.score_thresh)
    cfg.TEST.DETECTIONS_PER_IMAGE = job.spec.eval.max_dets
    for key in arch.max_dets_keys:
        set_dotted(cfg, key, job.spec.eval.max_dets)


def loader_workers(job: WorkerJob) -> int | None:
    """Data loader processes per worker: the CPUs Ray reserves for the worker, less one for
    the training process itself (0 loads in the training process). None when the spec's
    ``model.opts`` set ``DATALOADER.NUM_WORKERS`` itself."""
    if "DATALOADER.NUM_WORKERS" in list(job.spec.model.opts)[::2]:
        return None
    return max(0, math.floor(job.spec.resources.cpus_per_worker) - 1)


def build_cfg(job: WorkerJob, device: str) -> CfgNode:
    """The frozen cfg a worker trains with, identical on every rank."""
    cfg = get_cfg()
    arch = get_arch(job.spec.model.arch)
    if arch.add_config is not None:
        arch.add_config(cfg)
    # Our own keys, for what the spec knows and detectron2 does not; the spec sets them after
    # the merge (a model yaml may name them, but the spec wins).
    cfg.ORCHESTRATOR = CfgNode(
        {"EVAL_CHUNK_BYTES": DEFAULT_CHUNK_BYTES, "EVAL_CPU_FALLBACK": True, "VISUALIZE": 0},
        new_allowed=True)
    cfg.merge_from_file(job.config_file)
    cfg.merge_from_list(list(job.spec.model.opts))
    apply_plan(cfg, job)
    _apply_data(cfg, job)
    cfg.ORCHESTRATOR.EVAL_CHUNK_BYTES = job.spec.eval.chunk_bytes
    cfg.ORCHESTRATOR.EVAL_CPU_FALLBACK = job.spec.eval.cpu_fallback
    cfg.ORCHESTRATOR.VISUALIZE = job.spec.eval.visualize
    workers = loader_workers(job)
    if workers is not None:
        cfg.DATALOADER.NUM_WORKERS = workers
    cfg.MODEL.WEIGHTS = job.spec.model.weights
    cfg.MODEL.DEVICE = device
    cfg.OUTPUT_DIR = job.output_dir
    cfg.freeze()
    return cfg
