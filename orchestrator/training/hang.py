"""Hang diagnostics: when the group stops making progress, every rank's Python stack goes to
the run as ``hangs/attempt-<n>.txt``, headed by the ranks that did not arrive.

A hung collective gives no clue by itself: the ranks that wait in it fail after
``run.collective_timeout_s`` (NCCL's watchdog may even abort them without unwinding), and the
rank that never came is killed by the restart. So each worker runs a ``HangWatch``: a thread
that sees when this rank finished no iteration for half the timeout, well before the
collective fails. It then "arrives" on the ``HangBoard``, a tiny actor that the driver owns
(it outlives every worker, whichever rank is stuck), with its own stack. The first rank to
arrive reports: after a grace period, the ranks that have not arrived are the ones that
hold the group up (a stopped or stuck process cannot arrive), and their stacks are read from
outside with ``py-spy`` on their own node (a Ray task pinned to it; ``--nonblocking`` reads
a SIGSTOPped process too). When every rank arrives, all of them are slow together (a long
evaluation), which is no hang: nothing is reported.

The normal path costs one attribute write per iteration; the thread wakes once a second.
The watch itself is a detectron2 hook, in ``hang_watch``; this module imports no detectron2
(the driver creates the board).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HangBoard", "Member", "format_report", "group_members", "py_spy_dump",
           "report_line", "stack_of", "thread_stacks", "write_report"]

logger = logging.getLogger(__name__)

ARTIFACT_DIR = "hangs"


@dataclass(frozen=True)
class Member:
    """Where one rank of the group runs: its stack is read there."""

    rank: int
    node: str
    pid: int
    host: str


class HangBoard:
    """The driver's record of the current attempt: its members and the ranks that reported a
    stall. Run as a Ray actor (``ray.remote(num_cpus=0)(HangBoard)``) that every rank can
    reach, whichever of them is stuck."""

    def __init__(self) -> None:
        self.attempt = 0
        self.members: list[Member] = []
        self.arrivals: dict[int, tuple[int, str]] = {}
        self.reports: list[str] = []

    def start_attempt(self, members: list[Member]) -> int:
        """Rank 0 of a new group, at start-up: a new attempt, nobody arrived yet."""
        self.attempt += 1
        self.members, self.arrivals = list(members), {}
        return self.attempt

    def arrive(self, rank: int, iteration: int, stack: str) -> bool:
        """A rank that stalls; True for the first of the attempt, which reports."""
        first = not self.arrivals
        self.arrivals[rank] = (iteration, stack)
        return first

    def state(self) -> tuple[int, list[Member], dict[int, tuple[int, str]]]:
        return self.attempt, self.members, dict(self.arrivals)

    def settle(self, report: str | None) -> None:
        """The reporter is done: arrivals are cleared (the next stall elects anew)."""
        self.arrivals = {}
        if report:
            self.reports.append(report)

    def get_reports(self) -> list[str]:
        return list(self.reports)


def group_members(node: str) -> list[Member]:
    """Every rank's node and pid, gathered once at start-up (one collective)."""
    import socket

    import torch.distributed as dist

    me = Member(dist.get_rank() if dist.is_initialized() else 0, node, os.getpid(),
                socket.gethostname())
    if not dist.is_initialized():
        return [me]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, me)
    return sorted(gathered, key=lambda m: m.rank)


def thread_stacks() -> str:
    """This process's Python stacks, every thread but the caller's (the watch's own says
    nothing about the hang), most recent call last (as py-spy's are not: the order is said
    in each header)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        if ident == threading.get_ident():
            continue
        stack = "".join(traceback.format_stack(frame))
        parts.append(f'Thread {ident} "{names.get(ident, "?")}" (most recent call last):\n'
                     f"{stack}")
    return "\n".join(parts)


def _stopped(pid: int) -> bool:
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state in ("T", "t")
    return False


def py_spy_dump(pid: int, timeout_s: float = 30) -> str:
    """The Python stacks of another process on this machine, read from outside by py-spy
    (most recent call first). A stopped process cannot be paused again (py-spy's ptrace
    attach fails on it), so it is read with ``--nonblocking``; a running one is paused for a
    consistent picture, and read without pausing when that is refused."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    modes = [["--nonblocking"]] if _stopped(pid) else [[], ["--nonblocking"]]
    errors = []
    for mode in modes:
        try:
            done = subprocess.run([spy, "dump", *mode, "--pid", str(pid)], capture_output=True,
                                  text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(str(exc))
            continue
        if done.returncode == 0:
            return f"(py-spy dump{' --nonblocking' if mode else ''})\n{done.stdout}"
        errors.append(done.stderr.strip().splitlines()[0] if done.stderr.strip() else "failed")
    return f"stack not captured: py-spy: {'; '.join(errors)}"


def _remote_stack(member: Member, timeout_s: float) -> str:
    """``py_spy_dump`` on the member's own node (its pid means nothing elsewhere)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(py_spy_dump).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(member.node, soft=False))
    try:
        return str(ray.get(task.remote(member.pid), timeout=timeout_s))
    except Exception as exc:  # noqa: BLE001 - the node may be gone: say so in the report
        return f"stack not captured on node {member.node}: {exc}"


def stack_of(member: Member, my_node: str, timeout_s: float = 60) -> str:
    """A rank's stack read from outside: here when it shares this node, else on its node."""
    if member.node == my_node:
        return py_spy_dump(member.pid, timeout_s)
    return _remote_stack(member, timeout_s)


def format_report(*, attempt: int, members: list[Member], arrivals: dict[int, tuple[int, str]],
                  missing: dict[int, str], stalled_s: float, timeout_s: float) -> str:
    """The artifact's text: who did not arrive first, then every rank's stack."""
    iteration = max((it for it, _ in arrivals.values()), default=-1)
    names = ", ".join(str(r) for r in sorted(missing)) or "none"
    lines = [f"attempt {attempt}: no iteration finished for {stalled_s:.0f} s at iteration "
             f"{iteration} (run.collective_timeout_s {timeout_s:g})",
             f"did not arrive: rank {names}",
             f"arrived: rank {', '.join(str(r) for r in sorted(arrivals)) or 'none'}", ""]
    for member in members:
        if member.rank in missing:
            head, stack = "DID NOT ARRIVE, read from outside", missing[member.rank]
        elif member.rank in arrivals:
            head, stack = f"arrived at iteration {arrivals[member.rank][0]}", \
                arrivals[member.rank][1]
        else:
            continue
        lines += [f"=== rank {member.rank} (pid {member.pid}, host {member.host}, node "
                  f"{member.node[:12]}): {head} ===", stack.rstrip(), ""]
    return "\n".join(lines)


def write_report(text: str, *, attempt: int, output_dir: str, tracking_uri: str,
                 run_id: str) -> str:
    """Write ``hangs/attempt-<n>.txt`` beside the worker's logs and log it to the run.
    Returns the artifact path."""
    from mlflow.tracking import MlflowClient

    path = Path(output_dir, ARTIFACT_DIR, f"attempt-{attempt}.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    MlflowClient(tracking_uri=tracking_uri).log_artifact(run_id, str(path), ARTIFACT_DIR)
    return f"{ARTIFACT_DIR}/{path.name}"


def report_line(text: str, *, members: int, artifact: str) -> str:
    """The log line: the report's first two lines, and where the stacks are."""
    head, missing = text.splitlines()[:2]
    stall = head.split(": ", 1)[1]
    return f"{stall}: {missing.replace('did not arrive: ', '')} did not arrive; stacks of " \
           f"{members} ranks in {artifact}"
