"""Run one chunk of mask postprocessing so that a CUDA out-of-memory error does not end it.

Why it exists: evaluation memory depends on the image (its size, how many detections), not on
anything the user set, so one large photo must not kill a run that trained for hours. A chunk
that hits CUDA OOM is retried once after freeing the caching allocator, then run on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

__all__ = ["OOMGuard"]

logger = logging.getLogger(__name__)

ChunkOp = Callable[..., torch.Tensor]


class OOMGuard:
    """Runs chunk ops with OOM recovery; create one per evaluation (it logs once per life).

    Args:
        cpu_fallback: after the retry also fails, run the chunk on CPU; if false, re-raise.

    Attributes:
        oom_events: chunks that hit CUDA OOM so far (retried, moved to CPU or re-raised).
        cpu_chunks: chunks that ended up running on CPU.
    """

    def __init__(self, *, cpu_fallback: bool = True) -> None:
        self.cpu_fallback = cpu_fallback
        self.oom_events = 0
        self.cpu_chunks = 0

    def run(self, op: ChunkOp, *tensors: torch.Tensor, what: str = "") -> torch.Tensor:
        """``op(*tensors)``; on CUDA OOM: empty the cache and retry, then ``op`` on CPU copies.

        ``what`` describes the chunk (instances, sizes, budget) for the log line.
        """
        # Retries happen outside the ``except`` blocks on purpose: the exception's traceback
        # keeps the failed frames, and with them their device tensors, alive until it ends.
        try:
            return op(*tensors)
        except torch.cuda.OutOfMemoryError:
            self.oom_events += 1
        torch.cuda.empty_cache()
        try:
            result = op(*tensors)
        except torch.cuda.OutOfMemoryError:
            if not self.cpu_fallback:
                self._report(what, "cpu_fallback is off, giving up")
                raise
        else:
            self._report(what, "recovered by emptying the CUDA cache and retrying")
            return result
        self.cpu_chunks += 1
        self._report(what, "running it on CPU")
        return op(*(t.cpu() for t in tensors))

    def _report(self, what: str, outcome: str) -> None:
        if self.oom_events == 1:  # once per guard, i.e. per evaluation
            logger.warning(
                "CUDA out of memory in mask postprocessing (%s); %s. Later OOMs in this "
                "evaluation are handled the same way without logging.", what, outcome,
            )
