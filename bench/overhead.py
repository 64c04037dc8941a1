"""What does running through orchestrator cost? Plain detectron2 vs ``orchestrator submit``.

The same cfg (jobs/demo.yaml's model and data) and iteration count run
  (a) as plain detectron2 in one process (our Trainer, no Ray, no MLflow), and
  (b) through ``orchestrator submit`` with 1 worker (embedded Ray, MLflow, progress),
each in its own subprocess with one compute thread (Ray gives a 1-CPU worker
OMP_NUM_THREADS=1, so the plain run gets the same). Prints steady-state s/iter for both (median
of detectron2's per-iteration ``time`` after the first 5 iterations), their ratio, and the
time from start to the end of the first iteration.

    .venv/bin/python bench/overhead.py [--iters 40]
"""

from __future__ import annotations

import argparse
import json
import os
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


def run_submit(workdir: Path, iters: int) -> tuple[float, float]:
    """(s/iter, seconds from launch to the first iteration's metrics in MLflow)."""
    from mlflow.tracking import MlflowClient

    start = time.time()
    cmd = [str(REPO / ".venv/bin/orchestrator"), "submit", str(JOB), "resources.workers=1",
           f"solver.max_iter={iters}", "tracking.log_period=1", "eval.enabled=false",
           "tracking.experiment=bench"]
    subprocess.run(cmd, cwd=workdir, check=True, stdout=subprocess.DEVNULL)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        plain, plain_first = run_plain(Path(a), args.iters)
        ray, ray_first = run_submit(Path(b), args.iters)
    print(f"iterations: {args.iters} (steady state = median after the first {WARMUP})")
    print(f"plain detectron2, 1 process : {plain:.3f} s/iter, first iteration after "
          f"{plain_first:.1f} s")
    print(f"orchestrator submit, 1 worker: {ray:.3f} s/iter, first iteration after "
          f"{ray_first:.1f} s")
    print(f"ratio submit/plain: {ray / plain:.2f}x s/iter, {ray_first / plain_first:.2f}x "
          "time to first iteration")


if __name__ == "__main__":
    main()
