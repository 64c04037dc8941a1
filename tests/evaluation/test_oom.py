"""CUDA OOM in a chunk: retried after emptying the cache, then run on CPU, logged once.

There is no GPU here, so the error is injected: ops that raise ``torch.cuda.OutOfMemoryError``
for their first calls.
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch

from orchestrator.evaluation import oom, postprocess
from orchestrator.evaluation.oom import OOMGuard
from orchestrator.evaluation.postprocess import collect_bitmasks, global_mask_chunks

LOGGER = "orchestrator.evaluation.oom"


class FlakyOp:
    """Doubles its input, after raising CUDA OOM on its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls <= self.failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return tensor * 2


@pytest.fixture
def emptied(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(oom.torch.cuda, "empty_cache", lambda: calls.append(1))
    return calls


def test_no_oom_runs_once(emptied: list[int], caplog: pytest.LogCaptureFixture) -> None:
    op = FlakyOp(0)
    assert OOMGuard().run(op, torch.ones(2)).tolist() == [2.0, 2.0]
    assert op.calls == 1 and not emptied and not caplog.records


def test_retry_after_emptying_the_cache(emptied: list[int],
                                        caplog: pytest.LogCaptureFixture) -> None:
    guard, op = OOMGuard(), FlakyOp(1)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert guard.run(op, torch.ones(2), what="chunk of 2 masks").tolist() == [2.0, 2.0]
    assert op.calls == 2 and emptied == [1] and guard.cpu_chunks == 0
    assert "chunk of 2 masks" in caplog.text and "retrying" in caplog.text


def test_then_cpu(emptied: list[int], caplog: pytest.LogCaptureFixture) -> None:
    guard, op = OOMGuard(cpu_fallback=True), FlakyOp(2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert guard.run(op, torch.ones(2)).tolist() == [2.0, 2.0]
    assert op.calls == 3 and guard.cpu_chunks == 1 and "on CPU" in caplog.text


def test_without_cpu_fallback_the_error_is_raised(emptied: list[int]) -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        OOMGuard(cpu_fallback=False).run(FlakyOp(2), torch.ones(2))
    assert emptied == [1]


def test_every_chunk_falls_back_but_it_is_logged_once(
        emptied: list[int], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = postprocess._resize_chunk
    attempts: dict[int, int] = {}

    def oom_twice_per_chunk(masks: torch.Tensor, **kwargs: object) -> torch.Tensor:
        key = int(masks.sum() * 1000)
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] <= 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        assert masks.device.type == "cpu"
        return real(masks, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(postprocess, "_resize_chunk", oom_twice_per_chunk)
    masks = torch.rand(5, 9, 7, generator=torch.Generator().manual_seed(0))
    chunks = functools.partial(global_mask_chunks, masks, stride=4, input_size=(33, 26),
                               output_size=(70, 51))
    guard = OOMGuard()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got = collect_bitmasks(chunks(chunk_bytes=1, guard=guard), 5, (70, 51))
    monkeypatch.setattr(postprocess, "_resize_chunk", real)
    expected = collect_bitmasks(chunks(), 5, (70, 51))
    assert torch.equal(got, expected)
    assert guard.oom_events == guard.cpu_chunks == 5 and len(emptied) == 5
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1
    assert "1 masks at 70x51" in warnings[0].getMessage()
