"""The CUDA/NCCL side of the paths the CPU tests cover with gloo (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import TINY_JOB, write_spec


@pytest.mark.gpu
def test_one_gpu_worker_trains_with_nccl(workdir: Path) -> None:
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = CliRunner().invoke(app, ["submit", str(job), "resources.workers=1",
                                      "resources.gpus_per_worker=1"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert run.info.status == "FINISHED"
    assert (run.data.params["backend"], run.data.tags["device"]) == ("nccl", "cuda")
    assert run.data.metrics["system/gpu_max_memory_gb"] > 0


@pytest.mark.gpu
def test_chunked_postprocess_on_cuda_agrees_with_cpu() -> None:
    import torch

    from orchestrator.evaluation.oom import OOMGuard
    from orchestrator.evaluation.postprocess import collect_bitmasks, global_mask_chunks

    masks = torch.rand(7, 50, 38)
    outputs = []
    for device in ("cpu", "cuda"):
        chunks = global_mask_chunks(masks.to(device), stride=4, input_size=(200, 150),
                                    output_size=(401, 301), chunk_bytes=2**20,
                                    guard=OOMGuard(cpu_fallback=True))
        outputs.append(collect_bitmasks(chunks, 7, (401, 301)).cpu())
    differing = (outputs[0] != outputs[1]).float().mean().item()
    assert differing < 1e-3  # CUDA and CPU bilinear kernels may round a boundary pixel apart
