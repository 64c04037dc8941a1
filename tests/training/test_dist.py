from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from detectron2.engine import defaults
from detectron2.utils import comm

from orchestrator.training.dist import (
    _create_ddp_model,
    ddp_for_device,
    local_ranks_by_node,
    setup_local_process_group,
)


def test_local_ranks_follow_the_real_node_map_not_contiguity() -> None:
    pairs = [(1, 0), (0, 1), (1, 2), (0, 3)]
    assert local_ranks_by_node(pairs) == {0: [1, 3], 1: [0, 2]}
    by_id = [("node-b", 0), ("node-a", 1), ("node-b", 2)]  # Ray node ids, not ranks
    assert list(local_ranks_by_node(by_id).items()) == [("node-a", [1]), ("node-b", [0, 2])]


def test_ddp_patch_is_scoped_to_the_block() -> None:
    original = defaults.create_ddp_model
    with ddp_for_device():
        assert defaults.create_ddp_model is not original
    assert defaults.create_ddp_model is original
    with pytest.raises(RuntimeError), ddp_for_device():
        raise RuntimeError("boom")
    assert defaults.create_ddp_model is original


def test_cpu_models_get_no_device_ids() -> None:
    seen: dict[str, object] = {}

    def fake(model: torch.nn.Module, **kwargs: object) -> str:
        seen.update(kwargs)
        return "wrapped"

    assert _create_ddp_model(fake, torch.nn.Linear(2, 2), broadcast_buffers=False) == "wrapped"
    assert seen == {"device_ids": None, "broadcast_buffers": False}


@pytest.fixture
def single_process_group(tmp_path: Path):  # type: ignore[no-untyped-def]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}",
                            rank=0, world_size=1)
    yield
    comm._LOCAL_PROCESS_GROUP = None
    dist.destroy_process_group()


def test_local_group_satisfies_detectron2(single_process_group: None) -> None:
    assert setup_local_process_group("node-a") == [0]
    assert comm.get_local_rank() == 0
    assert comm.get_local_size() == 1
    with ddp_for_device():  # world size 1: detectron2 returns the model itself
        model = torch.nn.Linear(2, 2)
        assert defaults.create_ddp_model(model) is model
