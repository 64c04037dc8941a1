"""What does running through orchestrator cost, and what do more workers buy?

1. The same cfg (jobs/demo.yaml's model and data) and iteration count run
   (a) as plain detectron2 in one process (our Trainer, no Ray, no MLflow), and
   (b) through ``orchestrator submit`` with 1 worker (embedded Ray, MLflow, progress),
   each in its own subprocess with one compute thread (Ray gives a 1-CPU worker
   OMP_NUM_THREADS=1, so the plain run gets the same). Prints steady-state s/iter for both
   (median of detectron2's per-iteration ``time`` after the first 5 iterations), their ratio,
   and the time from start to the end of the first iteration.
2. ``submit`` with 2 workers against 1 (same images per worker): images/s and scaling
   efficiency.
3. Restart cost: a 2-worker run with ``run.max_failures=1`` whose rank-1 worker process is
   SIGKILLed mid-training; seconds from the kill to the next logged training iteration.

    .venv/bin/python bench/overhead.py [--iters 40] [--skip-restart]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "demo.yaml"
WARMUP = 5


def steady_s_per_iter(metrics_json: Path) -> float:
    rows = [json.loads(line) for line in metrics_json.read_text().splitlines() if line.strip()]
    times = [r["time"] for r in rows if "time" in r and r["iteration"] >= WARMUP]
    return statistics.median(times)


def submit_cmd(iters: int, workers: int, *extra: str) -> list[str]:
    return [str(REPO / ".venv/bin/orchestrator"), "submit", str(JOB),
            f"resources.workers={workers}", f"solver.max_iter={iters}", "tracking.log_period=1",
            "eval.enabled=false", "tracking.experiment=bench", *extra]


def run_submit(workdir: Path, iters: int, workers: int = 1) -> tuple[float, float]:
    """(s/iter, seconds from launch to the first iteration's metrics in MLflow)."""
    from mlflow.tracking import MlflowClient

    start = time.time()
    subprocess.run(submit_cmd(iters, workers), cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("bench").experiment_id])[0]
    first = min(m.timestamp for m in client.get_metric_history(run.info.run_id, "total_loss"))
    metrics = next((workdir / ".orchestrator" / "output").glob("*/metrics.json"))
    return steady_s_per_iter(metrics), first / 1000 - start


PLAIN = """
import sys, time, json
start = float(sys.argv[1])
from pathlib import Path
from detectron2.engine import HookBase
from orchestrator.job import WorkerJob
from orchestrator.launch.submit import prepare
from orchestrator.spec import load_spec
from orchestrator.data.register import register_datasets
from orchestrator.training.config import build_cfg
from orchestrator.training.trainer import Trainer

class FirstIter(HookBase):
    def after_step(self):
        if self.trainer.iter == 0:
            Path("first_iter").write_text(str(time.time() - start))

spec = load_spec(Path(sys.argv[2]), ["resources.workers=1", f"solver.max_iter={sys.argv[3]}",
                                     "eval.enabled=false"])
prepared = prepare(spec)
job = WorkerJob(spec=prepared.spec, plan=prepared.plan, data=prepared.data,
                config_file=str(prepared.config_file), output_dir=str(Path("out").resolve()),
                run_id="", tracking_uri="")
register_datasets(job.data)
Path("out").mkdir(exist_ok=True)
cfg = build_cfg(job, "cpu")
trainer = Trainer(cfg, log_period=1)
trainer.register_hooks([FirstIter()])
trainer.resume_or_load(resume=False)
trainer.train()
"""


def run_plain(workdir: Path, iters: int) -> tuple[float, float]:
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", PLAIN, str(start), str(JOB), str(iters)], cwd=workdir,
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = float((workdir / "first_iter").read_text())
    return steady_s_per_iter(workdir / "out" / "metrics.json"), first


def restart_cost(workdir: Path, iters: int) -> float:
    """Seconds from SIGKILL of the rank-1 worker to the next training iteration in MLflow."""
    from mlflow.tracking import MlflowClient

    proc = subprocess.Popen(submit_cmd(iters, 2, "run.max_failures=1",
                                       "solver.checkpoint_period=5"),
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    pid = _wait(lambda: _rank1_pid(workdir), "rank 1 never started")
    run_id = _wait(lambda: _run_past(client, 8), "training made no progress")
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=900)
    after = [m.timestamp / 1000 for m in client.get_metric_history(run_id, "total_loss")
             if m.timestamp / 1000 > killed]
    return min(after) - killed


def _wait(probe, what: str, timeout: float = 600):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError(what)


def _rank1_pid(workdir: Path) -> int | None:
    for log in (workdir / ".orchestrator" / "output").glob("*/log.txt.rank1"):
        found = re.search(r"\(pid (\d+)\) starts training", log.read_text())
        if found:
            return int(found.group(1))
    return None


def _run_past(client, step: int) -> str | None:  # type: ignore[no-untyped-def]
    experiment = client.get_experiment_by_name("bench")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    if runs and runs[0].data.metrics and max(
            (m.step for m in client.get_metric_history(runs[0].info.run_id, "total_loss")),
            default=-1) >= step:
        return str(runs[0].info.run_id)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--skip-restart", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, \
            tempfile.TemporaryDirectory() as c, tempfile.TemporaryDirectory() as d:
        plain, plain_first = run_plain(Path(a), args.iters)
        ray, ray_first = run_submit(Path(b), args.iters)
        two, _ = run_submit(Path(c), args.iters, workers=2)
        restart = None if args.skip_restart else restart_cost(Path(d), args.iters)
    print(f"iterations: {args.iters} (steady state = median after the first {WARMUP})")
    print(f"plain detectron2, 1 process : {plain:.3f} s/iter, first iteration after "
          f"{plain_first:.1f} s")
    print(f"orchestrator submit, 1 worker: {ray:.3f} s/iter, first iteration after "
          f"{ray_first:.1f} s")
    print(f"ratio submit/plain: {ray / plain:.2f}x s/iter, {ray_first / plain_first:.2f}x "
          "time to first iteration")
    ims = 2  # jobs/demo.yaml: 2 images per worker
    one_ips, two_ips = ims / ray, 2 * ims / two
    print(f"submit, 2 workers: {two:.3f} s/iter; images/s 1 worker {one_ips:.2f}, 2 workers "
          f"{two_ips:.2f}: speed-up {two_ips / one_ips:.2f}x, scaling efficiency "
          f"{two_ips / one_ips / 2:.0%}")
    if restart is not None:
        print(f"restart cost: {restart:.1f} s from killing a worker to the next training "
              "iteration")


if __name__ == "__main__":
    main()
