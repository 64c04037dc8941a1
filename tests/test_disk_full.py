"""A full disk: the reason is the last line printed (after whatever came before it), with no SQL
anywhere. The disk is a small tmpfs where this runs as root; elsewhere a file-size limit
(RLIMIT_FSIZE) on the command makes its writes fail the same way."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_JOB, write_spec


@dataclass
class SmallDisk:
    path: Path
    limit: Callable[[], None] | None  # the file-size limit to run commands under, if no tmpfs
    reasons: tuple[str, ...]  # what the last line may say


def _small_disk(tmp_path: Path, size: str, limit_bytes: int) -> Iterator[SmallDisk]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                             capture_output=True, check=False).returncode == 0
    if mounted:
        try:
            yield SmallDisk(disk, None, ("no space left on device",))
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)
        return
    print(f"no tmpfs (not root?): a {limit_bytes}-byte file-size limit instead", file=sys.stderr)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    yield SmallDisk(disk, limit, ("file too large", "disk I/O error"))


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    yield from _small_disk(tmp_path, "256k", 200_000)


def orchestrator(disk: SmallDisk, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=disk.path,
                          text=True, capture_output=True, preexec_fn=disk.limit, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


def assert_reason_last(result: subprocess.CompletedProcess[str], disk: SmallDisk) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # the message wraps at the terminal width: the reason opens the last message
    last = " ".join(lines[-3:])
    assert result.returncode != 0
    assert any(f"error: {reason}" in last for reason in disk.reasons), result.stderr[-3000:]
    assert "[SQL" not in result.stdout + result.stderr, result.stderr[-3000:]


def test_a_store_on_a_full_disk(tiny_disk: SmallDisk, tmp_path: Path) -> None:
    log = tmp_path / "metrics.json"
    log.write_text('{"iteration": 19, "total_loss": 1.5}\n{"iteration": 39, "total_loss": 1.2}\n')
    result = orchestrator(tiny_disk, "runs", "import", str(log),
                          "--tracking-uri", f"sqlite:///{tiny_disk.path / 'mlflow.db'}")
    assert_reason_last(result, tiny_disk)
    assert result.returncode == 1


def test_a_dataset_on_a_full_disk(tiny_disk: SmallDisk) -> None:
    result = orchestrator(tiny_disk, "data", "synth", "shapes", "--num-images", "200")
    assert_reason_last(result, tiny_disk)
    assert result.returncode == 2
    assert not (tiny_disk.path / "shapes").exists()  # nothing half-written left in place


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    yield from _small_disk(tmp_path, "2m", 1_500_000)


@pytest.mark.slow
def test_a_training_that_fills_the_disk(small_disk: SmallDisk) -> None:
    """The dataset and the store fit; the checkpoint does not. The worker's traceback comes
    first, the reason last."""
    spec = write_spec(small_disk.path / "tiny.yaml", TINY_JOB)
    result = orchestrator(small_disk, "submit", str(spec), "resources.workers=1")
    assert_reason_last(result, small_disk)
    assert result.returncode == 1
