"""Shared fixtures: a scratch working directory and quiet, fast settings for real Ray runs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Real Ray, real MLflow, tuned for a 2-core CI box (FACTS section 7).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


LOW_DISK_GIB = 4


def pytest_report_header(config: pytest.Config) -> str:
    """Free disk under the temp folder, so a run that dies of a full disk says so up front."""
    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    note = "" if free >= LOW_DISK_GIB else f" (below {LOW_DISK_GIB} GiB: expect ENOSPC errors)"
    return f"free disk in {tempfile.gettempdir()}: {free:.1f} GiB{note}"


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


# --------------------------------------------------------------------------- team servers
# Real servers on 127.0.0.1 (orchestrator.team.servers), started once per test session and
# stopped by pid at its end: an S3 API server, PostgreSQL, and an MLflow server on both.


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    from orchestrator.team.servers import start_s3

    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The credentials the S3 server accepts, in this process's environment (Ray and pyarrow
    read them from there, as on a real cluster)."""
    from orchestrator.team.servers import S3_ENV

    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    return dict(S3_ENV)


@pytest.fixture
def s3_bucket(s3_server, s3_env, request: pytest.FixtureRequest) -> str:
    """A fresh bucket for one test, named after it."""
    import re
    import uuid

    from orchestrator.team.servers import create_bucket

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    create_bucket(s3_server.url, bucket)
    return bucket


@pytest.fixture(scope="session")
def postgres_server():
    from orchestrator.team.servers import ServerError, postgres_bin, start_postgres

    if postgres_bin() is None:
        pytest.skip("PostgreSQL IS NOT INSTALLED: install the Debian 'postgresql' package "
                    "(.ci/run does) to run the team-server tests")
    try:
        server = start_postgres()
    except ServerError as exc:
        pytest.skip(f"POSTGRESQL COULD NOT START: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def team_tracking(s3_server, postgres_server, tmp_path_factory: pytest.TempPathFactory):
    """An MLflow server on PostgreSQL with artifacts proxied to the S3 server's ``mlflow``
    bucket, as a team runs it: clients need only its URL."""
    from orchestrator.team.servers import create_bucket, start_mlflow

    create_bucket(s3_server.url, "team-mlflow")
    server = start_mlflow(backend_uri=postgres_server.url,
                          artifacts_destination="s3://team-mlflow/mlflow",
                          s3_endpoint=s3_server.url, log_dir=tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()
