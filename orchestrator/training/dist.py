"""detectron2's process-group expectations, met inside a Ray Train worker.

Ray Train creates the global process group; detectron2 additionally expects a per-machine
("local") group that only ``detectron2.engine.launch`` creates, and its v0.6
``create_ddp_model`` passes ``device_ids=[local_rank]``, which is wrong for CPU models and for
GPUs renumbered by ``CUDA_VISIBLE_DEVICES``. Both are handled here, scoped to the worker.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Hashable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from detectron2.engine import defaults as d2_defaults
from detectron2.utils import comm

__all__ = ["local_ranks_by_node", "setup_local_process_group", "ddp_for_device"]


def local_ranks_by_node(pairs: list[tuple[Hashable, int]]) -> dict[Hashable, list[int]]:
    """Group ``(node, world_rank)`` pairs into sorted rank lists per node.

    Ray usually gives a node a contiguous block of ranks, but does not promise it, so the
    groups are built from the actual map.
    """
    nodes: dict[Hashable, list[int]] = {}
    for node, rank in pairs:
        nodes.setdefault(node, []).append(rank)
    return {node: sorted(ranks) for node, ranks in sorted(nodes.items(), key=lambda kv: str(kv[0]))}


def setup_local_process_group(node: Hashable) -> list[int]:
    """Create one group per node (same order on every rank, as ``new_group`` requires) and
    install this node's as detectron2's local group. Returns this node's ranks.

    ``node`` should be the Ray node id: Ray Train's own node rank and local rank group workers
    by IP address, which puts several nodes behind one address (containers, or a local test
    cluster on 127.0.0.1) into one "machine"."""
    if not dist.is_initialized():
        return [0]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (node, dist.get_rank()))
    mine: list[int] = []
    for key, ranks in local_ranks_by_node([tuple(p) for p in gathered]).items():
        group = dist.new_group(ranks)
        if key == node:
            mine = ranks
            comm._LOCAL_PROCESS_GROUP = group
    return mine


def _create_ddp_model(original: Any, model: torch.nn.Module, **kwargs: Any) -> Any:
    """detectron2's create_ddp_model with device_ids that fit the device the model is on."""
    device = next(model.parameters()).device
    kwargs["device_ids"] = [device.index] if device.type == "cuda" else None
    return original(model, **kwargs)


@contextlib.contextmanager
def ddp_for_device() -> Iterator[None]:
    """While active, ``DefaultTrainer`` wraps models in DDP with the right ``device_ids``.

    Scoped to trainer construction: detectron2 is left as it was on exit.
    """
    original = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = functools.partial(_create_ddp_model, original)
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original
