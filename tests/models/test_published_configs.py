"""Every published BlendMask/CondInst config of the reference toolbox builds its exact model.

For each of the 27 JSONs in shared/data/adelaidet_state_dicts/ (config path, parameter count,
every state-dict entry with its shape), our config at the same relative path under configs/
must build a model with exactly those entries and that many parameters. Models are built on
PyTorch's meta device: shapes without memory or weight-init cost, so all 27 take seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from detectron2.modeling import build_model

from tests.conftest import REPO
from tests.models.helpers import make_cfg

# The project's shared folder sits next to the checkout; ORCHESTRATOR_SHARED points elsewhere.
SHARED = Path(os.environ.get("ORCHESTRATOR_SHARED", REPO.parent / "shared"))
STATE_DICTS = SHARED / "data" / "adelaidet_state_dicts"
EXPECTED = sorted(p.name for p in STATE_DICTS.glob("*.json")) if STATE_DICTS.is_dir() else []


def _reference(name: str) -> dict[str, Any]:
    return json.loads((STATE_DICTS / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def our_config(reference_config: str) -> Path:
    """configs/<family lower case>/<rest of the reference path>."""
    family, *rest = Path(reference_config).parts
    return REPO / "configs" / family.lower() / Path(*rest)


def build_on_meta(arch: str, config: Path) -> torch.nn.Module:
    cfg = make_cfg(arch, config)
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


@pytest.mark.skipif(not STATE_DICTS.is_dir(), reason=f"{STATE_DICTS} not available")
def test_all_27_published_configs_are_listed() -> None:
    assert len(EXPECTED) == 27


@pytest.mark.parametrize("name", EXPECTED or [pytest.param("none", marks=pytest.mark.skip(
    reason=f"{STATE_DICTS} not available"))])
def test_published_config_builds_the_reference_state_dict(name: str) -> None:
    reference = _reference(name)
    config = our_config(reference["config"])
    assert config.is_file(), f"{config} missing for {reference['config']}"
    arch = "blendmask" if name.startswith("BlendMask") else "condinst"
    model = build_on_meta(arch, config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = reference["state_dict"]
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {k: (v, expected[k]) for k, v in ours.items() if expected[k] != v} == {}
    assert len(ours) == reference["num_state_dict_entries"]
    assert sum(p.numel() for p in model.parameters()) == reference["num_params"]
    # A checkpoint with exactly these entries loads strictly (meta tensors: no memory).
    checkpoint = {k: torch.empty(shape, device="meta") for k, shape in expected.items()}
    model.load_state_dict(checkpoint, strict=True, assign=True)
