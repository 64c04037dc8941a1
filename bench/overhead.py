"""What does running through orchestrator cost, and what do more workers buy?

1. Steady state and start-up. The same cfg (jobs/demo.yaml's model and data, a fixed
   ``SEED`` so both see the same batches) runs
   (a) as plain detectron2 in one process (our Trainer with its PeriodicCheckpointer, no Ray,
       no MLflow), and
   (b) through ``orchestrator submit`` with 1 worker (embedded Ray, MLflow, progress),
   each in its own subprocess with one compute thread (Ray gives a 1-CPU worker
   OMP_NUM_THREADS=1, so the plain run gets the same). The two alternate ``--repeats`` times
   per log period, because this machine's speed drifts by several percent between runs; the
   ratio printed is the median of the pairs' ratios, for wall s/iter and for the CPU seconds
   per iteration of the process that trains (``CpuTrace``).
   - ``tracking.log_period=1``: s/iter is the median wall-clock gap between consecutive
     iterations after the first 5 (hooks and writers included), with a checkpoint every
     ``--checkpoint-period``; blocked seconds per checkpoint = how much longer the two gaps
     around a checkpoint are than two median gaps.
   - the default log period (20): s/iter is the mean over the iterations between the first and
     the last logged one (no checkpoints in that window).
   - start-up: start of the command to the end of the first iteration. Submits run in one
     directory whose MLflow store exists (warm); one more submit into a new directory gives
     the cost of a fresh store.
2. ``submit`` with 2 workers against 1 (same images per worker): images/s and scaling
   efficiency (``--skip-scaling`` leaves it out).
3. Ray Train alone, the floor under the start-up of 1 and the restart of 4: the same
   embedded Ray (``ray_session``) and a TorchTrainer whose train function does nothing;
   seconds from the command to the function running (1 worker), and from SIGKILLing rank 1
   to it running again (2 workers).
4. Restart cost: a 2-worker run with ``run.max_failures=1`` whose rank-1 worker process is
   SIGKILLed right after a checkpoint; seconds from the kill to the next logged training
   iteration, with the new worker's own start-up breakdown.

Absolute numbers depend on the machine's load (printed); compare the ratios of one run.

    .venv/bin/python bench/overhead.py [--iters 20] [--repeats 2] [--skip-restart] [--skip-scaling]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.launch.waiting import wait_until  # noqa: E402

JOB = REPO / "jobs" / "demo.yaml"
WARMUP = 5
SEEDED = ("model.opts=[SEED,7]",)  # same batches in every run
DEFAULT_LOG_PERIOD = 20
TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc/<pid>/stat's CPU times


@dataclass(frozen=True)
class Timing:
    """One run: wall s/iter, detectron2's ``time``, blocked s per checkpoint, first iteration,
    CPU s/iter of the training process."""

    wall: float
    d2_time: float
    blocked: float | None
    first: float
    cpu: float


class CpuTrace:
    """CPU seconds (all its threads) of the process that trains, read from /proc every 0.1 s.

    Per iteration it counts the work done in that process (ours: hooks, writers, Ray's threads
    in the worker) and not time spent waiting for a core, a second view beside wall time. (On
    the 2-CPU VM it drifted between runs as much as wall time: the host's speed changes.)"""

    def __init__(self, find_pid: Callable[[], int | None]) -> None:
        self.samples: list[tuple[float, float]] = []
        self._find_pid = find_pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuTrace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pid = None
        while not self._stop.wait(0.1):
            pid = pid or self._find_pid()
            if pid is None:
                continue
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # it has ended
                return
            self.samples.append((time.time(), (int(fields[11]) + int(fields[12])) / TICKS))

    def at(self, when: float) -> float:
        """CPU seconds used by ``when`` (linear between the two samples around it)."""
        i = bisect.bisect_left(self.samples, (when, 0.0))
        last = len(self.samples) - 1
        (t0, c0), (t1, c1) = self.samples[max(i - 1, 0)], self.samples[min(i, last)]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)

    def per_iteration(self, stamps: dict[int, float]) -> float:
        """CPU s/iter between the first logged iteration after warm-up and the last one."""
        steps = sorted(s for s in stamps if s >= WARMUP)
        first, last = steps[0], steps[-1]
        return (self.at(stamps[last]) - self.at(stamps[first])) / (last - first)


def d2_s_per_iter(metrics_json: Path) -> float:
    rows = [json.loads(line) for line in metrics_json.read_text().splitlines() if line.strip()]
    times = [r["time"] for r in rows if "time" in r and r["iteration"] >= WARMUP]
    return statistics.median(times)


def wall_timing(stamps: dict[int, float], period: int, log_period: int) -> tuple[float,
                                                                                 float | None]:
    """(s/iter, blocked s per checkpoint) from the time stamps of the logged iterations."""
    if log_period > 1:  # a stamp every log_period iterations: mean over the logged window
        steps = sorted(s for s in stamps if s >= WARMUP)
        return (stamps[steps[-1]] - stamps[steps[0]]) / (steps[-1] - steps[0]), None
    return gap_timing(stamps, period)


def gap_timing(stamps: dict[int, float], period: int) -> tuple[float, float | None]:
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
               extra: tuple[str, ...] = (), log_period: int = 1) -> Timing:
    start = time.time()
    earlier = set((workdir / ".orchestrator" / "output").glob("*"))
    rank0 = r"rank 0/\d+ \(pid (\d+)\) starts training"
    with CpuTrace(lambda: _int(_rank_log_match(workdir, "log.txt", rank0, skip=earlier))) as trace:
        subprocess.run(submit_cmd(iters, workers, f"solver.checkpoint_period={period}", *extra,
                                  f"tracking.log_period={log_period}"),
                       cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    client, run = _latest_run(workdir)
    history = client.get_metric_history(run.info.run_id, "total_loss")
    stamps = {m.step: m.timestamp / 1000 for m in history}  # taken on the training thread
    output = Path(run.data.params["spec.run.output_dir"]) / f"demo-{run.info.run_id[:8]}"
    wall, blocked = wall_timing(stamps, _iter_period(output), log_period)
    return Timing(wall=wall, d2_time=d2_s_per_iter(output / "metrics.json"), blocked=blocked,
                  first=_first_iteration_end(stamps, wall) - start,
                  cpu=trace.per_iteration(stamps))


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)


def _first_iteration_end(stamps: dict[int, float], s_per_iter: float) -> float:
    """When iteration 0 ended: its MLflow time stamp, or with a longer log period the first
    stamp less the iterations before it (at the measured s/iter)."""
    first = min(stamps)
    return stamps[first] - first * s_per_iter


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
from orchestrator.launch.prepared import prepare
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
trainer = Trainer(cfg, log_period=int(sys.argv[7]))
trainer.register_hooks([Stamps()])
trainer.resume_or_load(resume=False)
trainer.train()
"""


def run_plain(workdir: Path, iters: int, period: int, device: str = "cpu",
              extra: tuple[str, ...] = (), log_period: int = 1) -> Timing:
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", PLAIN, str(start), str(JOB), str(iters),
                             str(period), device, json.dumps(list(extra)), str(log_period)],
                            cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    with CpuTrace(lambda: proc.pid) as trace:
        if proc.wait():
            raise subprocess.CalledProcessError(proc.returncode, "plain detectron2")
    every = {int(k): v for k, v in json.loads((workdir / "stamps.json").read_text()).items()}
    # The same iterations as submit's MLflow stamps: those its writers ran after.
    stamps = {k: v for k, v in every.items() if (k + 1) % log_period == 0 or log_period == 1}
    wall, blocked = wall_timing(stamps, _iter_period(workdir / "out"), log_period)
    return Timing(wall=wall, d2_time=d2_s_per_iter(workdir / "out" / "metrics.json"),
                  blocked=blocked, first=every[0] - start, cpu=trace.per_iteration(stamps))


RAY_ALONE = """
import json, os, signal, sys, tempfile, threading, time
start = float(sys.argv[1])
from pathlib import Path
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from orchestrator.launch.embedded import ray_session
from orchestrator.spec import load_spec

workers, out = int(sys.argv[3]), Path(tempfile.mkdtemp())

def train(config):  # enters; with 2 workers the first attempt waits for rank 1's kill
    import os, time
    import ray.train
    rank = ray.train.get_context().get_world_rank()
    (Path(config["out"]) / f"enter-{rank}-{os.getpid()}").write_text(str(time.time()))
    if config["kill"] and not (Path(config["out"]) / "killed").exists():
        time.sleep(600)

def kill_rank_1():
    while not (entered := list(out.glob("enter-1-*"))):
        time.sleep(0.05)
    time.sleep(1.0)  # one health-check poll after the group started, as restart_cost waits
    (out / "killed").write_text(str(time.time()))
    os.kill(int(entered[0].name.rsplit("-", 1)[1]), signal.SIGKILL)

spec = load_spec(Path(sys.argv[2]), [f"resources.workers={workers}"])
with ray_session(spec):
    began = time.time()
    if workers > 1:
        threading.Thread(target=kill_rank_1, daemon=True).start()
    TorchTrainer(train, train_loop_config={"out": str(out), "kill": workers > 1},
                 scaling_config=ScalingConfig(num_workers=workers,
                                              resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(storage_path=str(out / "storage"),
                                      failure_config=FailureConfig(max_failures=1)),
                 torch_config=TorchConfig(backend="gloo")).fit()
stamps = sorted(float(f.read_text()) for f in out.glob("enter-*"))
killed = float((out / "killed").read_text()) if workers > 1 else None
print(json.dumps({"started": began - start, "entered": stamps[0] - start,
                  "reentered": max(stamps) - killed if killed else None}))
"""


@dataclass(frozen=True)
class RayAlone:
    """Ray Train with a train function that does nothing: the floor under every submit."""

    started: float  # command start -> the embedded Ray is up (Ray and torch imported)
    entered: float  # command start -> the train function runs on the 1 worker
    reentered: float | None  # 2 workers, rank 1 SIGKILLed -> the train function runs again


def ray_alone(workdir: Path, restart: bool) -> RayAlone:
    """The same embedded Ray that submit starts (``ray_session``) and Ray Train's own
    TorchTrainer, with no detectron2, no MLflow and no pre-flight, timed from a fresh process;
    the 2-worker kill only with ``restart``."""
    result = {}
    for workers in (1, 2) if restart else (1,):
        start = time.time()
        done = subprocess.run([sys.executable, "-c", RAY_ALONE, str(start), str(JOB),
                               str(workers)], cwd=workdir, check=True, capture_output=True,
                              text=True)
        result[workers] = json.loads(done.stdout.strip().splitlines()[-1])
    return RayAlone(started=result[1]["started"], entered=result[1]["entered"],
                    reentered=result[2]["reentered"] if restart else None)


@dataclass(frozen=True)
class Restart:
    """A worker killed once a checkpoint is in ``run.storage_path``, and what followed."""

    seconds: float  # SIGKILL -> next logged training iteration
    saved: int  # the iteration of the last checkpoint before the kill
    restored: int  # the iteration the new attempt restored
    startup: str  # the new rank 0's start-up line
    blocked: list[float]  # rank 0's 'training blocked N s', one per checkpoint, both attempts
    saving: list[float]  # the local save's share of each ('save N s')


def restart_cost(workdir: Path, iters: int, extra: tuple[str, ...] = ()) -> Restart:
    """Kill rank 1 right after checkpoint 9 reached storage (its staged copy deleted, Ray's
    controller given a health-check poll to record it), so nothing is replayed and only the
    restart itself is timed. (Killed while the asynchronous upload is still running, the group
    restarts from the checkpoint before: those iterations are replayed, and not logged twice.)"""
    proc = subprocess.Popen(submit_cmd(iters, 2, "run.max_failures=1",
                                       "solver.checkpoint_period=5", *SEEDED, *extra),
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = wait_until(lambda: _rank_log_match(workdir, "log.txt.rank1",
                                             r"\(pid (\d+)\) starts training"),
                     timeout=600, what="rank 1 never started", every=0.1)
    saved = int(wait_until(lambda: _rank_log_match(workdir, "log.txt",
                                                   r"checkpoint at iteration (9|1\d)\b"),
                           timeout=600, what="no checkpoint at iteration 9", every=0.1))
    staged = workdir / ".orchestrator" / "output"
    wait_until(lambda: not list(staged.glob(f"*/checkpoint-staging/iter_{saved:07d}-*")),
               timeout=120, what="the checkpoint upload never finished", every=0.05)
    time.sleep(1.0)  # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S is 0.5 s
    killed = time.time()
    os.kill(int(pid), signal.SIGKILL)
    proc.wait(timeout=900)
    client, run = _latest_run(workdir)
    after = sorted(m.timestamp / 1000 for m in
                   client.get_metric_history(run.info.run_id, "total_loss")
                   if m.timestamp / 1000 > killed)
    log = (Path(run.data.params["spec.run.output_dir"]) / f"demo-{run.info.run_id[:8]}"
           / "log.txt").read_text()
    restored = re.findall(r"restored from Ray checkpoint at iteration (\d+)", log)
    return Restart(seconds=after[0] - killed, saved=saved, restored=int(restored[-1]),
                   startup=re.findall(r"worker start-up took .*", log)[-1],
                   **checkpoint_waits(log))


def checkpoint_waits(log: str) -> dict[str, list[float]]:
    """Rank 0's ``training blocked N s (save M s`` lines: ``blocked`` and ``saving``."""
    return {"blocked": [float(s) for s in re.findall(r"training blocked ([\d.]+) s", log)],
            "saving": [float(s) for s in re.findall(r"\(save ([\d.]+) s", log)]}


def _rank_log_match(workdir: Path, name: str, pattern: str,
                    skip: Collection[Path] = ()) -> str | None:
    """Group 1 of ``pattern`` in a rank log ``name`` of an output folder not in ``skip``."""
    for log in (workdir / ".orchestrator" / "output").glob(f"*/{name}"):
        if log.parent in skip:
            continue
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found.group(1)
    return None


def _blocked(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _warm_caches() -> None:
    """Import what both sides import once, so the first measured run does not pay for reading
    the libraries from disk."""
    subprocess.run([sys.executable, "-c", "import detectron2.engine, ray.train.torch, mlflow"],
                   check=True, stderr=subprocess.DEVNULL)


def steady_state(iters: int, period: int, repeats: int, log_period: int) -> list[tuple[Timing,
                                                                                        Timing]]:
    """Alternating plain and submit runs (submits share a directory: a warm store)."""
    pairs = []
    with tempfile.TemporaryDirectory() as store:
        subprocess.run(submit_cmd(4, 1, "solver.checkpoint_period=1000"), cwd=store,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as plain_dir:
                plain = run_plain(Path(plain_dir), iters, period, extra=SEEDED,
                                  log_period=log_period)
            ray = run_submit(Path(store), iters, period, extra=SEEDED, log_period=log_period)
            pairs.append((plain, ray))
            print(f"  plain {plain.wall:.3f} s/iter ({plain.d2_time:.3f}), first iteration "
                  f"{plain.first:.1f} s, blocked {_blocked(plain.blocked)}; submit "
                  f"{ray.wall:.3f} s/iter ({ray.d2_time:.3f}), first iteration {ray.first:.1f} s"
                  f", blocked {_blocked(ray.blocked)}: ratio {ray.wall / plain.wall:.3f}x; CPU "
                  f"{plain.cpu:.3f} and {ray.cpu:.3f} s/iter: {ray.cpu / plain.cpu:.3f}x",
                  flush=True)
    return pairs


def _median_ratio(pairs: list[tuple[Timing, Timing]], field: str) -> float:
    return statistics.median(getattr(b, field) / getattr(a, field) for a, b in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20,
                        help="solver.max_iter at the reference batch (1 worker runs twice as many)")
    parser.add_argument("--repeats", type=int, default=2, help="plain/submit pairs per log period")
    parser.add_argument("--checkpoint-period", type=int, default=5,
                        help="solver.checkpoint_period (at the spec's reference batch)")
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args()
    if args.iters < 20:
        parser.error("--iters must be at least 20: the default log period logs every 20th of "
                     "the 1-worker run's 2 x iters iterations, and s/iter needs two of them")
    load = os.getloadavg()
    iters, period = args.iters, args.checkpoint_period
    print(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"({os.cpu_count()} CPUs)", flush=True)
    _warm_caches()
    print(f"tracking.log_period=1, a checkpoint every {period} (steady state = median gap after "
          f"the first {WARMUP}; detectron2's 'time' in brackets):", flush=True)
    every = steady_state(iters, period, args.repeats, 1)
    print(f"tracking.log_period={DEFAULT_LOG_PERIOD} (the default), no checkpoint:", flush=True)
    default = steady_state(iters, 1000, args.repeats, DEFAULT_LOG_PERIOD)
    plain_first = statistics.median(p.first for p, _ in every + default)
    warm_first = statistics.median(s.first for _, s in every + default)
    with tempfile.TemporaryDirectory() as fresh_dir:
        fresh = run_submit(Path(fresh_dir), iters, 1000, extra=SEEDED)
    blocked = [s.blocked for _, s in every if s.blocked is not None]
    plain_blocked = [p.blocked for p, _ in every if p.blocked is not None]
    print(f"ratio submit/plain: {_median_ratio(every, 'wall'):.3f}x s/iter at log_period=1, "
          f"{_median_ratio(default, 'wall'):.3f}x at log_period={DEFAULT_LOG_PERIOD} "
          f"(median of {args.repeats} pairs each); CPU s/iter of the training process: "
          f"{_median_ratio(every, 'cpu'):.3f}x and {_median_ratio(default, 'cpu'):.3f}x",
          flush=True)
    print(f"first iteration: plain {plain_first:.1f} s, submit {warm_first:.1f} s on a warm "
          f"store (+{warm_first - plain_first:.1f} s), {fresh.first:.1f} s on a fresh store "
          f"(+{fresh.first - plain_first:.1f} s)", flush=True)
    with tempfile.TemporaryDirectory() as alone_dir:
        alone = ray_alone(Path(alone_dir), restart=not args.skip_restart)
    print(f"Ray Train alone (embedded Ray, a train function that does nothing): Ray up at "
          f"{alone.started:.1f} s, the function runs at {alone.entered:.1f} s; submit's first "
          f"iteration comes {warm_first - alone.entered:.1f} s after that (plain detectron2's "
          f"whole start: {plain_first:.1f} s)", flush=True)
    if blocked and plain_blocked:
        print(f"blocked per checkpoint: plain {statistics.median(plain_blocked):.2f} s, submit "
              f"{statistics.median(blocked):.2f} s", flush=True)
    if not args.skip_scaling:
        with tempfile.TemporaryDirectory() as two_dir:
            one = statistics.median(s.wall for _, s in every)
            two = run_submit(Path(two_dir), iters, period, workers=2, extra=SEEDED)
        ims = 2  # jobs/demo.yaml: 2 images per worker
        one_ips, two_ips = ims / one, 2 * ims / two.wall
        print(f"submit, 2 workers: {two.wall:.3f} s/iter; images/s 1 worker {one_ips:.2f}, "
              f"2 workers {two_ips:.2f}: speed-up {two_ips / one_ips:.2f}x, scaling "
              f"efficiency {two_ips / one_ips / 2:.0%}", flush=True)
    if not args.skip_restart:
        with tempfile.TemporaryDirectory() as restart_dir:
            restart = restart_cost(Path(restart_dir), max(iters, 20))
        print(f"restart cost: {restart.seconds:.1f} s from killing a worker (checkpoint "
              f"{restart.saved} in storage) to the next logged training iteration (restored "
              f"from {restart.restored}: {restart.saved - restart.restored} iterations "
              f"replayed); new rank 0: {restart.startup}", flush=True)
        assert alone.reentered is not None
        print(f"Ray Train alone: {alone.reentered:.1f} s from killing a worker to the train "
              f"function running again (ours: {restart.seconds - alone.reentered:.1f} s more, "
              "for detectron2's imports, set-up and first iteration)", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
