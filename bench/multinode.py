"""Multi-node behaviour on a local cluster (``orchestrator cluster up``: 1-CPU Ray nodes on
127.0.0.1), one line per scenario:

- throughput: images/s of 2 nodes x 1 worker against 1 node x 1 worker (same images per
  worker), from MLflow step timestamps after the first iterations;
- node-loss: a [1, 2] job whose second node is SIGKILLed: seconds from the kill to training
  at 1 worker and to the next new logged step, workers before/after, final step against the
  plan, duplicate steps;
- grow: a [1, 2] job on one node, a node added mid-run: workers before/after, seconds from the
  node joining to the first iteration of the bigger group;
- hang: rank 1 SIGSTOPped inside training (run.collective_timeout_s=30): seconds from SIGSTOP
  to the next logged iteration after the restart;
- preemption: a [1, 2] job whose second node is drained for preemption with a 20 s deadline
  and SIGKILLed at it (``cluster preempt``): seconds from the drain request to the checkpoint,
  from the node's death to the next logged iteration, iterations redone.

    .venv/bin/python bench/multinode.py [--scenarios throughput,node-loss,grow,hang,preemption]
                                        [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.launch.local_cluster import NODE_ENV, ClusterProcess, preempt_node  # noqa: E402
from orchestrator.launch.waiting import wait_until  # noqa: E402

JOB = f"""
name: bench-multinode
model:
  arch: mask_rcnn
  config: {REPO}/configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml
data:
  synthetic: {{num_images: 24, size: 64, seed: 1}}
resources: {{workers: 2, ims_per_worker: 1}}
solver: {{reference_lr: 0.01, reference_batch: 2, max_iter: ITERS, warmup_iters: 2,
          checkpoint_period: 4}}
eval: {{enabled: false}}
tracking: {{log_period: 1}}
"""
REFERENCE_BATCH = 2  # JOB's: MLflow steps count iterations at this batch
START = re.compile(r"rank (\d+)/(\d+) \(pid (\d+)\) starts training")


class Run:
    """One ``orchestrator submit`` driver on this machine, joined to a local cluster."""

    def __init__(self, root: Path, cluster: ClusterProcess, iters: int, *overrides: str):
        self.root = root
        root.mkdir(parents=True)
        job = root / "job.yaml"
        job.write_text(JOB.replace("ITERS", str(iters)), encoding="utf-8")
        env = {**os.environ, **NODE_ENV, "RAY_ADDRESS": cluster.gcs_address,
               "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "submit", str(job),
             f"tracking.tracking_uri=sqlite:///{root}/mlflow.db",
             f"run.storage_path={root}/shared", f"run.output_dir={root}/output", *overrides],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def client(self):  # type: ignore[no-untyped-def]
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=f"sqlite:///{self.root}/mlflow.db")

    def history(self, key: str) -> list[tuple[int, float, float]]:
        """(step, value, seconds) of a metric of the run, by step."""
        try:
            client = self.client()
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            if not runs:
                return []
            return sorted((m.step, m.value, m.timestamp / 1000)
                          for m in client.get_metric_history(runs[0].info.run_id, key))
        except Exception:  # noqa: BLE001 - the store is being created
            return []

    def last_step(self) -> int:
        return max((s for s, _, _ in self.history("total_loss")), default=-1)

    def rank_pid(self, rank: int) -> int | None:
        for log in (self.root / "output").glob("*/log.txt*"):
            for m in START.finditer(log.read_text(errors="replace")):
                if int(m[1]) == rank and int(m[2]) > 1:
                    return int(m[3])
        return None

    def wait(self, timeout: float = 1800) -> str:
        output, _ = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise SystemExit(f"{self.root.name}: submit failed\n{output[-3000:]}")
        return output

    def summary(self, planned_last: int) -> str:
        steps = [s for s, _, _ in self.history("total_loss")]
        workers = [int(v) for _, v, _ in self.history("plan/workers")]
        dupes = len(steps) - len(set(steps))
        return (f"workers {' -> '.join(map(str, workers))}, final step {steps[-1]} "
                f"(plan {planned_last}), duplicate steps: {dupes}")


def wait_for(predicate: Callable[[], object], timeout: float = 1200) -> object:
    return wait_until(predicate, timeout=timeout, what="the scenario made no progress")


def next_step_after(run: Run, moment: float) -> float:
    after = [t for _, _, t in run.history("total_loss") if t > moment]
    return min(after) - moment if after else float("nan")


def images_per_s(run: Run, skip: int = 3) -> float:
    """Steps are iterations at the reference batch, whatever the worker count."""
    points = [(s, t) for s, _, t in run.history("total_loss") if s >= skip]
    (s0, t0), (s1, t1) = points[0], points[-1]
    return (s1 - s0) * REFERENCE_BATCH / (t1 - t0)


def throughput(tmp: Path) -> None:
    rates = {}
    for nodes in (1, 2):
        with ClusterProcess.start(nodes, state_path=tmp / f"tp{nodes}.json") as cluster:
            # 16 iterations at either batch (max_iter is given at the reference batch 2).
            run = Run(tmp / f"throughput-{nodes}", cluster, 8 * nodes,
                      f"resources.workers={nodes}")
            run.wait()
            rates[nodes] = images_per_s(run)
    print(f"throughput: 1 node x 1 worker {rates[1]:.2f} images/s, 2 nodes x 1 worker "
          f"{rates[2]:.2f} images/s: {rates[2] / rates[1]:.2f}x", flush=True)


def startup_after(run: Run, moment: float) -> str:
    """The restarted worker's own account of its start-up (``worker start-up took ...``)."""
    for log in (run.root / "output").glob("*/log.txt"):
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if "worker start-up took" in line]
        if len(lines) > 1:
            return lines[-1].split("worker start-up took ", 1)[1]
    return "not logged"


def node_loss(tmp: Path) -> None:
    """The restart is timed to the first iterations at the smaller size (``plan/workers``
    changes after the first two), as grow times its own; the next new step comes after the
    iterations since the last checkpoint have been trained again, which the checkpoint
    period decides, not the restart."""
    with ClusterProcess.start(2, state_path=tmp / "loss.json") as cluster:
        run = Run(tmp / "node-loss", cluster, 16, "resources.workers=[1,2]",
                  "run.max_failures=1")
        wait_for(lambda: run.last_step() >= 5)
        killed_at = time.time()
        cluster.kill_node("worker-1")
        run.wait()
    smaller = [t for _, v, t in run.history("plan/workers") if v == 1 and t > killed_at]
    resized = f"{min(smaller) - killed_at:.1f} s" if smaller else "never"
    print(f"node-loss: {resized} from SIGKILL of a node to training at 1 worker (its start-up:"
          f" {startup_after(run, killed_at)}), {next_step_after(run, killed_at):.1f} s to the "
          f"next new step; {run.summary(15)}", flush=True)


def grow(tmp: Path) -> None:
    with ClusterProcess.start(1, state_path=tmp / "grow.json") as cluster:
        run = Run(tmp / "grow", cluster, 24, "resources.workers=[1,2]",
                  "run.elastic_resize_check_s=5")
        wait_for(lambda: run.last_step() >= 5)
        cluster.add_node()
        joined = time.time()
        run.wait()
    bigger = [t for s, v, t in run.history("plan/workers") if v == 2]
    moved = f"{min(bigger) - joined:.1f} s" if bigger else "never"
    print(f"grow: node joined -> first iteration at 2 workers: {moved}; {run.summary(23)}",
          flush=True)


def hang(tmp: Path) -> None:
    with ClusterProcess.start(2, state_path=tmp / "hang.json") as cluster:
        run = Run(tmp / "hang", cluster, 16, "run.max_failures=1",
                  "run.collective_timeout_s=30")
        wait_for(lambda: run.last_step() >= 5)
        pid = int(wait_for(lambda: run.rank_pid(1)))  # type: ignore[arg-type]
        stopped_at = time.time()
        os.kill(pid, signal.SIGSTOP)
        try:
            run.wait()
        finally:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
    print(f"hang: {next_step_after(run, stopped_at):.1f} s from SIGSTOP of rank 1 to the next "
          f"logged iteration (collective timeout 30 s); {run.summary(15)}", flush=True)


def preemption(tmp: Path, deadline_s: int = 20) -> None:
    with ClusterProcess.start(2, state_path=tmp / "preempt.json") as cluster:
        run = Run(tmp / "preemption", cluster, 40, "resources.workers=[1,2]",
                  "run.max_failures=0", "run.preemption_check_every=1")
        wait_for(lambda: run.last_step() >= 5)
        asked_at, accepted = time.time(), []
        # the kill is at the deadline counted from the GCS accepting the drain
        preempt_node(cluster.state_path, "worker-1", deadline_s,
                     on_drained=lambda kill_at: accepted.append(kill_at - deadline_s))
        killed_at = time.time()
        run.wait()
    print(f"preemption: `ray drain-node` answered in {accepted[0] - asked_at:.1f} s; "
          f"{preemption_summary(run, accepted[0], killed_at)}; {run.summary(39)}", flush=True)


def preemption_summary(run: Run, drained_at: float, killed_at: float) -> str:
    """Seconds from the drain to the checkpoint (the ``preemption/iteration`` mark), from the
    kill to the next iteration, and how many iterations were trained twice: steps after the
    checkpoint at the old batch (a restart resumes from the checkpoint, so those are redone)."""
    saved = run.history("preemption/iteration")
    if not saved:
        return "no preemption checkpoint"
    at, _, saved_s = saved[0]
    before = [s for s, _, t in run.history("total_loss") if t < killed_at]
    redone = len([s for s in before if s > at])
    return (f"{saved_s - drained_at:.1f} s from the drain request to the checkpoint (iteration "
            f"{at}, deadline {killed_at - drained_at:.0f} s), {next_step_after(run, killed_at):.1f}"
            f" s from the node's death to the next logged iteration, iterations redone: {redone}")


SCENARIOS = {"throughput": throughput, "node-loss": node_loss, "grow": grow, "hang": hang,
             "preemption": preemption}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each scenario this many times (restart times vary by run)")
    args = parser.parse_args()
    for key, value in NODE_ENV.items():
        os.environ.setdefault(key, value)
    for _ in range(args.repeat):
        for name in args.scenarios.split(","):
            with tempfile.TemporaryDirectory(prefix="bench-mn-") as tmp:
                SCENARIOS[name](Path(tmp))


if __name__ == "__main__":
    main()
