"""Can a cluster place the job's workers at all? Asked before ``submit --address`` submits.

A worker larger than every node, or more workers than all nodes hold, would wait for ever on
a cluster that cannot grow: that is bad input (exit 2, the numbers named). A cluster that may
grow (an autoscaler with node types), or one whose nodes cannot be read, is left to
``run.pending_timeout_s`` on the driver (``launch.pending``).
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from typing import Any

from orchestrator.errors import InputError
from orchestrator.spec import JobSpec

__all__ = ["placement_problem", "check_cluster"]


def _worker(spec: JobSpec) -> dict[str, float]:
    res = spec.resources
    need = {"CPU": float(res.cpus_per_worker)}
    if res.gpus_per_worker > 0:
        need["GPU"] = float(res.gpus_per_worker)
    return need


def _fits(node: dict[str, float], need: dict[str, float]) -> int:
    """How many workers of size ``need`` one node holds."""
    counts = [math.floor(node.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0]
    return min(counts) if counts else 1 << 30


def _amounts(resources: dict[str, float], keys: list[str]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in keys)


def placement_problem(spec: JobSpec, nodes: list[dict[str, float]], where: str) -> str | None:
    """Why the workers can never be placed on ``nodes`` (each node's total resources)."""
    need, res = _worker(spec), spec.resources
    keys = sorted(need)
    sizes = ", ".join(f"[{_amounts(n, keys)}]" for n in nodes) or "none"
    if not any(_fits(node, need) for node in nodes):
        return (f"resources: one worker needs {_amounts(need, keys)} but no node of {where} "
                f"has that much (nodes: {sizes}); lower resources.cpus_per_worker / "
                "gpus_per_worker or add bigger nodes")
    room = sum(_fits(node, need) for node in nodes)
    if room < res.min_workers:
        total = {k: sum(n.get(k, 0) for n in nodes) for k in keys}
        return (f"resources: {res.min_workers} workers x {_amounts(need, keys)} need "
                f"{_amounts({k: v * res.min_workers for k, v in need.items()}, keys)} but "
                f"{where} has {_amounts(total, keys)} in all, room for {room} worker(s) "
                f"(nodes: {sizes}); lower resources.workers or add nodes")
    return None


def _autoscaler_report(address: str) -> dict[str, Any] | None:
    """The autoscaler's last report from the dashboard; None if it has none (yet)."""
    with urllib.request.urlopen(f"{address.rstrip('/')}/api/cluster_status",  # noqa: S310
                                timeout=10) as answer:
        status = (json.load(answer).get("data") or {}).get("clusterStatus") or {}
    report = status.get("autoscalerReport")
    return report if report and report.get("nodeTypeMapping") else None


def _can_grow(address: str, wait_s: float = 20) -> bool | None:
    """Whether the cluster's autoscaler knows node types it could launch (None: unknown).
    Nodes started without an autoscaling config (``ray start``, ``cluster up``) are typed
    ``node_<id>`` in its report. A head started seconds ago has no report yet: wait for the
    first (the monitor writes one every few seconds)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            report = _autoscaler_report(address)
        except Exception:  # noqa: BLE001 - an older or guarded dashboard: do not guess
            return None
        if report is not None:
            types = report["nodeTypeMapping"].values()
            return any(not str(t).startswith("node_") for t in types)
        if time.monotonic() > deadline:
            return None
        time.sleep(1)


def _node_resources(address: str) -> list[dict[str, float]] | None:
    from ray.util.state import list_nodes

    try:
        nodes: list[Any] = list_nodes(address=address, filters=[("state", "=", "ALIVE")],
                                      detail=True, raise_on_missing_output=False)
    except Exception:  # noqa: BLE001 - the state API is optional: the driver still watches
        return None
    return [dict(n.resources_total or {}) for n in nodes]


def check_cluster(spec: JobSpec, address: str) -> None:
    """Refuse (exit 2) a job that the fixed-size cluster at ``address`` can never place."""
    if _can_grow(address) is not False:
        return
    nodes = _node_resources(address)
    if nodes is None:
        return
    problem = placement_problem(spec, nodes, f"the cluster at {address}")
    if problem:
        raise InputError(problem)
