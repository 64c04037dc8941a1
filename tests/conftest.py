"""Shared fixtures: a scratch working directory and quiet, fast settings for real Ray runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Real Ray, real MLflow, tuned for a 2-core CI box (FACTS section 7).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory: mlflow.db, mlruns/ and .orchestrator/ land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


TINY_JOB = f"""
name: tiny
model:
  arch: mask_rcnn
  config: {REPO}/configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml
data:
  synthetic: {{num_images: 12, size: 64, seed: 1}}
resources: {{workers: 2, ims_per_worker: 1}}
solver:
  reference_lr: 0.01
  reference_batch: 2
  max_iter: 6
  warmup_iters: 2
  checkpoint_period: 100
eval: {{period: 0, score_thresh: 0.0}}
tracking: {{log_period: 2}}
"""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests run only where CUDA is; elsewhere they are skipped, not failed."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
