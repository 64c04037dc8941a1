"""Training across several real Ray nodes on this machine (``orchestrator cluster up``: own
raylets, node ids, ports and one CPU each, 127.0.0.1), submitted as on a cloud head."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.launch.local_cluster import ClusterProcess
from tests.conftest import TINY_JOB, write_spec

runner = CliRunner()
START = re.compile(r"rank (\d+)/(\d+) \(pid (\d+)\) starts training: \d+ iterations; "
                   r"node (\w+), local rank (\d+)/(\d+)")


def start_cluster(nodes: int, where: Path) -> ClusterProcess:
    where.mkdir(parents=True, exist_ok=True)
    return ClusterProcess.start(nodes, cpus_per_node=1, state_path=where / "cluster.json",
                                log_path=where / "cluster.log")


@pytest.fixture
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    with start_cluster(2, tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


def job_args(workdir: Path, cluster: ClusterProcess) -> list[str]:
    """Where a cluster job writes: absolute paths, shared by every node of this machine."""
    return ["--address", cluster.address, f"tracking.tracking_uri=sqlite:///{workdir}/mlflow.db",
            f"run.storage_path={workdir}/shared", f"run.output_dir={workdir}/output"]


def starts(workdir: Path) -> list[tuple[int, int, int, str, int, int]]:
    """Every 'starts training' line of every rank log: (rank, world, pid, node, local rank,
    local size), in the order of the files."""
    found = []
    for log in sorted((workdir / "output").glob("*/log.txt*")):
        for m in START.finditer(log.read_text(errors="replace")):
            found.append((int(m[1]), int(m[2]), int(m[3]), m[4], int(m[5]), int(m[6])))
    return found


def test_two_nodes_train_over_gloo_with_one_rank_on_each(workdir: Path,
                                                         two_nodes: ClusterProcess) -> None:
    node_ids = {n["node_id"] for n in two_nodes.state()["nodes"]}
    job = write_spec(workdir / "tiny.yaml", TINY_JOB.replace(
        "checkpoint_period: 100", "checkpoint_period: 3"))
    result = runner.invoke(app, ["submit", str(job), *job_args(workdir, two_nodes),
                                 "eval.enabled=false"])
    assert result.exit_code == 0, result.output
    assert "SUCCEEDED" in result.output and "gloo" in result.output

    ranks = {rank: (node, local, size) for rank, world, _, node, local, size in starts(workdir)
             if world == 2}
    assert sorted(ranks) == [0, 1], ranks
    assert ranks[0][0] != ranks[1][0] and {ranks[0][0], ranks[1][0]} == node_ids
    assert all((local, size) == (0, 1) for _, local, size in ranks.values()), ranks

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FINISHED"]
    # Both ranks ran the hang watch; a run that never stalled has no hang report.
    assert client.list_artifacts(runs[0].info.run_id, "hangs") == []
    checkpoints = sorted(p.parent.name for p in (workdir / "shared").glob("*/iter_*/model.pth"))
    assert checkpoints == ["iter_0000002", "iter_0000005"]
    state = torch.load(next((workdir / "shared").glob("*/iter_0000005/model.pth")),
                       map_location="cpu", weights_only=False)
    assert state["trainer"]["iteration"] == 5 and state["total_batch"] == 2


def said(result) -> str:  # type: ignore[no-untyped-def]
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_cluster_commands_refuse_bad_input_without_starting_ray(workdir: Path) -> None:
    missing = runner.invoke(app, ["cluster", "down", "--state", str(workdir / "none.json")])
    assert missing.exit_code == 2 and "no local cluster is recorded" in said(missing)
    zero = runner.invoke(app, ["cluster", "up", "--nodes", "0",
                               "--state", str(workdir / "c.json")])
    assert zero.exit_code == 2 and "--nodes" in said(zero)
    state = workdir / "c.json"
    state.write_text('{"supervisor": 1, "address": "http://127.0.0.1:1", "temp_dir": "",'
                     ' "nodes": [{"name": "head", "node_id": "x", "pids": []}]}')
    unknown = runner.invoke(app, ["cluster", "kill-node", "worker-9", "--state", str(state)])
    assert unknown.exit_code == 2 and "no such node (nodes: head)" in said(unknown)
    taken = runner.invoke(app, ["cluster", "up", "--state", str(state)])
    assert taken.exit_code == 2 and "recorded there already" in said(taken)
