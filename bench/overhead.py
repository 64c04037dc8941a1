"""What does running through orchestrator cost, and what do more workers buy?

1. The same cfg (jobs/demo.yaml's model and data, a checkpoint every ``--checkpoint-period``)
   and iteration count run
   (a) as plain detectron2 in one process (our Trainer with its PeriodicCheckpointer, no Ray,
       no MLflow), and
   (b) through ``orchestrator submit`` with 1 worker (embedded Ray, MLflow, progress), twice in
       one directory: the first pays for creating the MLflow store, the second finds it (warm),
   each in its own subprocess with one compute thread (Ray gives a 1-CPU worker
   OMP_NUM_THREADS=1, so the plain run gets the same). Steady-state s/iter is the median
   wall-clock gap between consecutive iterations after the first 5 (it includes every hook and
   writer; detectron2's own ``time`` leaves those out and is printed beside it). Blocked seconds
   per checkpoint: how much longer the two gaps around a checkpoint iteration are than two
   median gaps. Also the time from start to the end of the first iteration.
2. ``submit`` with 2 workers against 1 (same images per worker): images/s and scaling
   efficiency (``--skip-scaling`` leaves it out).
3. Restart cost: a 2-worker run with ``run.max_failures=1`` whose rank-1 worker process is
   SIGKILLed mid-training; seconds from the kill to the next logged training iteration.

Absolute numbers depend on the machine's load (printed); compare the ratios of one run.

    .venv/bin/python bench/overhead.py [--iters 40] [--skip-restart] [--skip-scaling]
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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "demo.yaml"
WARMUP = 5


@dataclass(frozen=True)
class Timing:
    """One run: wall s/iter, detectron2's ``time``, blocked s per checkpoint, first iteration."""

    wall: float
    d2_time: float
    blocked: float | None
    first: float


def d2_s_per_iter(metrics_json: Path) -> float:
    rows = [json.loads(line) for line in metrics_json.read_text().splitlines() if line.strip()]
    times = [r["time"] for r in rows if "time" in r and r["iteration"] >= WARMUP]
    return statistics.median(times)


def wall_timing(stamps: dict[int, float], period: int) -> tuple[float, float | None]:
    """(median gap between consecutive iterations after warm-up, blocked s per checkpoint).

    A checkpoint written after iteration k lengthens the gap into k or the one after it,
    depending on where the hook that takes the time stamp sits: count both."""
    steps = sorted(s for s in stamps if s >= WARMUP)
    gaps = {s: stamps[s] - stamps[s - 1] for s in steps if s - 1 in stamps}
    plain_gaps = [g for s, g in gaps.items() if (s + 1) % period and s % period]
    median = statistics.median(plain_gaps or list(gaps.values()))
    extra = [gaps[k] + gaps[k + 1] - 2 * median for k in steps
             if (k + 1) % period == 0 and k in gaps and k + 1 in gaps]
    return median, (statistics.mean(extra) if extra else None)


def submit_cmd(iters: int, workers: int, *extra: str) -> list[str]:
    return [str(REPO / ".venv/bin/orchestrator"), "submit", str(JOB),
            f"resources.workers={workers}", f"solver.max_iter={iters}", "tracking.log_period=1",
            "eval.enabled=false", "tracking.experiment=bench", *extra]


def _latest_run(workdir: Path):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bench")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    return client, runs[0]


def run_submit(workdir: Path, iters: int, period: int, workers: int = 1,
               extra: tuple[str, ...] = ()) -> Timing:
    start = time.time()
    subprocess.run(submit_cmd(iters, workers, f"solver.checkpoint_period={period}", *extra),
                   cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    client, run = _latest_run(workdir)
    history = client.get_metric_history(run.info.run_id, "total_loss")
    stamps = {m.step: m.timestamp / 1000 for m in history}  # taken on the training thread
    output = Path(run.data.params["spec.run.output_dir"]) / f"demo-{run.info.run_id[:8]}"
    wall, blocked = wall_timing(stamps, _iter_period(output))
    return Timing(wall=wall, d2_time=d2_s_per_iter(output / "metrics.json"), blocked=blocked,
                  first=min(stamps.values()) - start)


def _iter_period(output: Path) -> int:
    """The checkpoint period in iterations, as the plan made it (spec periods are given at
    the reference batch)."""
    found = re.search(r"CHECKPOINT_PERIOD: (\d+)", (output / "config.yaml").read_text())
    assert found, output
    return int(found.group(1))


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

class Stamps(HookBase):
    def __init__(self):
        self.stamps = {}
    def after_step(self):
        self.stamps[self.trainer.iter] = time.time()
    def after_train(self):
        Path("stamps.json").write_text(json.dumps(self.stamps))

spec = load_spec(Path(sys.argv[2]), ["resources.workers=1", f"solver.max_iter={sys.argv[3]}",
                                     f"solver.checkpoint_period={sys.argv[4]}",
                                     "eval.enabled=false", *json.loads(sys.argv[6])])
prepared = prepare(spec)
job = WorkerJob(spec=prepared.spec, plan=prepared.plan, data=prepared.data,
                config_file=str(prepared.config_file), output_dir=str(Path("out").resolve()),
                run_id="", tracking_uri="")
register_datasets(job.data)
Path("out").mkdir(exist_ok=True)
cfg = build_cfg(job, sys.argv[5])
Path("out/config.yaml").write_text(cfg.dump())
trainer = Trainer(cfg, log_period=1)
trainer.register_hooks([Stamps()])
trainer.resume_or_load(resume=False)
trainer.train()
"""


def run_plain(workdir: Path, iters: int, period: int, device: str = "cpu",
              extra: tuple[str, ...] = ()) -> Timing:
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", PLAIN, str(start), str(JOB), str(iters), str(period),
                    device, json.dumps(list(extra))], cwd=workdir, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stamps = {int(k): v for k, v in json.loads((workdir / "stamps.json").read_text()).items()}
    wall, blocked = wall_timing(stamps, _iter_period(workdir / "out"))
    return Timing(wall=wall, d2_time=d2_s_per_iter(workdir / "out" / "metrics.json"),
                  blocked=blocked, first=stamps[0] - start)


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


def _blocked(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--checkpoint-period", type=int, default=10,
                        help="solver.checkpoint_period (at the spec's reference batch)")
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()
    iters, period = args.iters, args.checkpoint_period
    print(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"({os.cpu_count()} CPUs)", flush=True)
    print(f"iterations: {iters} at the reference batch (steady state = median wall-clock gap "
          f"after the first {WARMUP}; detectron2's 'time' in brackets)", flush=True)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, \
            tempfile.TemporaryDirectory() as c, tempfile.TemporaryDirectory() as d:
        plain = run_plain(Path(a), iters, period)
        print(f"plain detectron2, 1 process : {plain.wall:.3f} s/iter ({plain.d2_time:.3f}), "
              f"first iteration after {plain.first:.1f} s, blocked {_blocked(plain.blocked)} "
              "per checkpoint", flush=True)
        fresh = run_submit(Path(b), iters, period)
        ray = run_submit(Path(b), iters, period)  # same directory: the store exists now
        print(f"orchestrator submit, 1 worker: {ray.wall:.3f} s/iter ({ray.d2_time:.3f}), "
              f"first iteration after {ray.first:.1f} s (fresh MLflow store: "
              f"{fresh.first:.1f} s), blocked {_blocked(ray.blocked)} per checkpoint")
        print(f"ratio submit/plain: {ray.wall / plain.wall:.3f}x s/iter, "
              f"{ray.first / plain.first:.2f}x time to first iteration "
              f"(+{ray.first - plain.first:.1f} s warm store, +{fresh.first - plain.first:.1f} s "
              "fresh store)", flush=True)
        if not args.skip_scaling:
            two = run_submit(Path(c), iters, period, workers=2)
            ims = 2  # jobs/demo.yaml: 2 images per worker
            one_ips, two_ips = ims / ray.wall, 2 * ims / two.wall
            print(f"submit, 2 workers: {two.wall:.3f} s/iter; images/s 1 worker {one_ips:.2f}, "
                  f"2 workers {two_ips:.2f}: speed-up {two_ips / one_ips:.2f}x, scaling "
                  f"efficiency {two_ips / one_ips / 2:.0%}", flush=True)
        if not args.skip_restart:
            restart = restart_cost(Path(d), iters)
            print(f"restart cost: {restart:.1f} s from killing a worker to the next training "
                  "iteration", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
