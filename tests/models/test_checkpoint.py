"""Checkpoint compatibility with the reference BlendMask R_50_1x / CondInst MS_R_50_1x.

The R-50 models are built once per arch (a few seconds on CPU); the expected names and shapes
are the reference toolbox's (shared/data/*_state_dict_shapes.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from tests.conftest import REPO
from tests.models.helpers import build, make_cfg

# The project's shared/ folder sits next to the checkout; ORCHESTRATOR_SHARED points elsewhere.
SHAPES = Path(os.environ.get("ORCHESTRATOR_SHARED", REPO.parent / "shared")) / "data"
CASES = {
    "blendmask": ("configs/blendmask/R_50_1x.yaml", "blendmask_R_50_1x_state_dict_shapes.json",
                  35_981_562),
    "condinst": ("configs/condinst/MS_R_50_1x.yaml",
                 "condinst_MS_R_50_1x_state_dict_shapes.json", 34_111_179),
}
INT64_KEYS = ("num_batches_tracked", "sizes_of_interest")


def _reference(arch: str) -> dict[str, list[int]]:
    path = SHAPES / CASES[arch][1]
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    arch = request.param
    return arch, build(make_cfg(arch, REPO / CASES[arch][0]))


def _random_checkpoint(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {name: (torch.randint(0, 100, shape) if name.endswith(INT64_KEYS)
                   else torch.randn(shape)) for name, shape in shapes.items()}


def test_state_dict_names_and_shapes_match_the_reference(built: tuple[str, nn.Module]) -> None:
    arch, model = built
    expected = _reference(arch)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) - set(expected) == set()
    assert set(expected) - set(ours) == set()
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    assert sum(p.numel() for p in model.parameters()) == CASES[arch][2]


@pytest.mark.parametrize("drop_iter", [False, True], ids=["full", "without-_iter"])
def test_reference_checkpoint_loads_without_missing_or_unexpected_keys(
        built: tuple[str, nn.Module], drop_iter: bool, tmp_path: Path) -> None:
    arch, model = built
    state = _random_checkpoint(_reference(arch))
    if drop_iter:
        if "mask_head._iter" not in state:
            pytest.skip("only CondInst has mask_head._iter")
        del state["mask_head._iter"]
    path = tmp_path / "model.pth"
    torch.save({"model": state}, path)
    # detectron2's public loader: every entry of the checkpoint reaches the model unchanged
    # (a missing or mis-shaped entry would leave the model's own random value).
    DetectionCheckpointer(model).load(str(path))
    loaded = model.state_dict()
    assert set(state) <= set(loaded)
    assert [k for k, v in state.items() if not torch.equal(loaded[k], v)] == []
    # torch's strict load: no missing and no unexpected keys (an old CondInst checkpoint
    # without mask_head._iter included).
    result = model.load_state_dict(torch.load(path)["model"], strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
