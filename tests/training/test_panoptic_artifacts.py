"""A panoptic run logs ``stuff_classes.json`` (the S stuff names) beside ``classes.json``, read
from the registered dataset's metadata, into a real sqlite MLflow run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from mlflow.tracking import MlflowClient

from orchestrator.data.catalog import resolve_data
from orchestrator.data.register import register_dataset
from orchestrator.inference.loading import CLASSES_ARTIFACT, STUFF_CLASSES_ARTIFACT
from orchestrator.spec import parse_spec
from orchestrator.training.hooks import ArtifactHook
from tests.conftest import TINY_JOB


@pytest.fixture
def train_name(tmp_path: Path) -> Iterator[str]:
    """A generated panoptic train set (2 stuff classes), registered; removed after."""
    import yaml

    raw = yaml.safe_load(TINY_JOB)
    raw["data"] = {"synthetic": {"num_images": 4, "size": 32, "seed": 2, "stuff_classes": 2}}
    data = resolve_data(parse_spec(raw), cache_root=tmp_path / "cache", base=tmp_path)
    register_dataset(data.train)
    yield data.train.name
    DatasetCatalog.remove(data.train.name)
    MetadataCatalog.remove(data.train.name)


@pytest.mark.parametrize("panoptic_model", [True, False])
def test_stuff_classes_json_beside_classes_json(tmp_path: Path, train_name: str,
                                                 panoptic_model: bool) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "BlendMask"
    cfg.MODEL.PANOPTIC_FPN.COMBINE.ENABLED = panoptic_model
    cfg.DATASETS.TRAIN = (train_name,)
    hook = ArtifactHook(tracking_uri=client.tracking_uri, run_id=run_id,
                        output_dir=str(tmp_path))
    hook.trainer = SimpleNamespace(cfg=cfg, iter=0, max_iter=10)  # no weights to log
    hook.after_train()
    logged = {a.path for a in client.list_artifacts(run_id)}
    assert CLASSES_ARTIFACT in logged
    assert json.loads((tmp_path / CLASSES_ARTIFACT).read_text()) == \
        ["circle", "square", "triangle", "star"]
    assert (STUFF_CLASSES_ARTIFACT in logged) is panoptic_model
    if panoptic_model:
        assert json.loads((tmp_path / STUFF_CLASSES_ARTIFACT).read_text()) == ["sky", "grass"]
