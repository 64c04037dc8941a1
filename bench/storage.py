"""Checkpoints on local disk against S3, and a resume after losing every node.

The S3 side is a real S3 API server on 127.0.0.1 (``orchestrator.team.servers``: moto), the
demo model (jobs/demo.yaml) trains on it. In one run:

1. For each storage (a local folder, then a bucket): a 2-worker demo submit with a checkpoint
   every 5 iterations whose rank-1 worker is SIGKILLed once checkpoint 9 is stored
   (``overhead.restart_cost``): training seconds blocked per checkpoint (rank 0's ``training
   blocked N s`` lines of both attempts, median) and seconds from the kill to the next logged
   iteration. The two storages alternate ``--repeats`` times, because this machine's load
   drifts between runs; printed is each pair's S3/local and the median of the pairs' ratios.
   Every 5 iterations, an upload of the demo's 115 MB checkpoint to this machine's S3 server
   (about 7 s) is always in flight, and takes CPU from the next save. So each pair also runs
   the demo without a kill at a period longer than one upload (``--long-period``, default
   20): blocked per checkpoint at that period is the figure for the goal, blocked S3 <= 1.10x
   local.
2. Every node lost: the demo on a 2-node local cluster (``submit --address``, 1 worker per
   node), checkpoints in the bucket and tracking on an MLflow server on PostgreSQL with its
   artifacts in S3 (the team setup). Once Ray's snapshot in the bucket lists a checkpoint
   every node is SIGKILLed at once; a new cluster starts and ``submit --resume`` continues the
   run: seconds to start the new cluster, seconds from the resume's start to its first logged
   iteration, iterations trained again (the last iteration in rank 0's log at the loss less
   the one restored; at most ``--period`` while one upload takes less than a period), and the
   run's final status.

The S3 server runs on this machine, its request handling competing with the 1-CPU workers for
the cores (``--s3-nice 10`` lowers its priority, as if the storage were on other machines; on
this 2-core VM both gave the same ratio). Absolute numbers depend on the machine's load
(printed; another developer's job starting mid-run moves one side): compare the ratios of one
run, and repeat a run whose load average moved a lot.

    PYTHONPATH=$PWD .venv/bin/python bench/storage.py [--iters 40] [--repeats 3] [--s3-nice 0]
        [--long-period 20] [--long-iters 100] [--skip-restart] [--skip-local-s3]
        [--skip-every-node]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from overhead import (  # noqa: E402  (this folder)
    JOB,
    SEEDED,
    Restart,
    checkpoint_waits,
    restart_cost,
    submit_cmd,
)

from orchestrator.launch.local_cluster import NODE_ENV, ClusterProcess  # noqa: E402
from orchestrator.launch.waiting import wait_until  # noqa: E402
from orchestrator.team.servers import (  # noqa: E402
    S3_ENV,
    Server,
    create_bucket,
    s3_storage_uri,
    start_mlflow,
    start_postgres,
    start_s3,
)

CREDENTIALS = "run.env_from=[AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY]"


def one_storage(label: str, iters: int, storage: str | None) -> Restart:
    with tempfile.TemporaryDirectory() as workdir:
        extra = (f"run.storage_path={storage}", CREDENTIALS) if storage else ()
        found = restart_cost(Path(workdir), iters, extra)
    print(f"{label}: blocked per checkpoint median {statistics.median(found.blocked):.3f} s "
          f"(max {max(found.blocked):.3f} s, {len(found.blocked)} checkpoints; the local save "
          f"{statistics.median(found.saving):.3f} s of it); {found.seconds:.1f}"
          f" s from a worker SIGKILL (checkpoint {found.saved} stored) to the next logged "
          f"iteration (restored from {found.restored})", flush=True)
    return found


class EveryNode:
    """The every-node-lost scenario's servers, job and MLflow run."""

    def __init__(self, root: Path, s3: Server, tracking: Server, iters: int,
                 period: int) -> None:
        self.root = root
        self.bucket = "bench-every-node"
        create_bucket(s3.url, self.bucket)
        self.storage = s3_storage_uri(s3.url, self.bucket, "runs")
        self.endpoint = s3.url
        self.tracking = tracking.url
        self.iters = iters
        self.period = period

    def submit(self, cluster: ClusterProcess, *extra: str) -> subprocess.Popen[bytes]:
        args = [str(JOB), "--address", cluster.address, "resources.workers=2",
                f"solver.max_iter={self.iters}", f"solver.checkpoint_period={self.period}",
                "tracking.log_period=1", "eval.enabled=false", "tracking.experiment=bench",
                f"tracking.tracking_uri={self.tracking}", f"run.storage_path={self.storage}",
                f"run.output_dir={self.root}/output", CREDENTIALS, *SEEDED, *extra]
        env = {**os.environ, **NODE_ENV, **S3_ENV}
        self.log = self.root / f"submit-{time.time():.0f}.log"
        with open(self.log, "wb") as out:
            return subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", *args],
                                    cwd=self.root, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)

    def run(self):  # type: ignore[no-untyped-def]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking)
        experiment = client.get_experiment_by_name("bench")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return client, (runs[0] if runs else None)

    def stamps(self) -> dict[int, float]:
        client, run = self.run()
        if run is None:
            return {}
        return {m.step: m.timestamp / 1000
                for m in client.get_metric_history(run.info.run_id, "total_loss")}

    def rank0_log(self) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in (self.root / "output").glob("*/log.txt"))

    def stored(self) -> int | None:
        """The newest complete checkpoint: the last one Ray's snapshot in the bucket lists
        (Ray records a checkpoint there only once its upload is done)."""
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
                if o["Key"].endswith("/checkpoint_manager_snapshot.json")]
        if not keys:
            return None
        body = s3.get_object(Bucket=self.bucket, Key=keys[0])["Body"].read()
        listed = json.loads(body)["checkpoint_results"]
        return int(listed[-1]["checkpoint_dir_name"].removeprefix("iter_")) if listed else None

    def last_iteration(self) -> int:
        """The last iteration rank 0 logged (MLflow gets it a little later)."""
        return max(int(i) for i in re.findall(r"\biter: (\d+)", self.rank0_log()))

    def uploading(self) -> set[int]:
        """Checkpoints saved and not yet uploaded (their staged copies are still there)."""
        return {int(p.name[5:12])
                for p in (self.root / "output").glob("*/checkpoint-staging/iter_*")}


def cluster(where: Path) -> ClusterProcess:
    where.mkdir(parents=True, exist_ok=True)
    return ClusterProcess.start(2, cpus_per_node=1, state_path=where / "cluster.json",
                                log_path=where / "cluster.log")


def every_node(root: Path, s3: Server, iters: int, period: int) -> None:
    postgres = start_postgres()
    try:
        create_bucket(s3.url, "bench-mlflow")
        tracking = start_mlflow(backend_uri=postgres.url, log_dir=root, s3_endpoint=s3.url,
                                artifacts_destination="s3://bench-mlflow/mlflow")
        try:
            lose_and_resume(EveryNode(root, s3, tracking, iters, period))
        finally:
            tracking.stop()
    finally:
        postgres.stop()


def lose_and_resume(scenario: EveryNode) -> None:
    with cluster(scenario.root / "first") as first:
        proc = scenario.submit(first)
        saved = wait_until(scenario.stored, timeout=1200, what="no checkpoint stored")
        uploading = sorted(scenario.uploading())
        first.kill_every_node()
        before = scenario.last_iteration()
        proc.wait(timeout=300)
    started = time.time()
    with cluster(scenario.root / "second") as second:
        up = time.time() - started
        _, run = scenario.run()
        submitted = time.time()
        again = scenario.submit(second, "--resume", run.info.run_id)
        again.wait(timeout=1800)
    restored = re.findall(r"restored from Ray checkpoint at iteration (\d+)",
                          scenario.rank0_log())
    if not restored:
        submitted_log = scenario.log.read_text()[-3000:]
        raise SystemExit(f"the resumed run restored no checkpoint: {submitted_log}\n"
                         f"{scenario.rank0_log()[-3000:]}")
    after = [t for t in scenario.stamps().values() if t > submitted]
    if not after:
        raise SystemExit(f"the resumed run logged nothing: {scenario.log.read_text()[-3000:]}")
    resumed = min(after)
    _, run = scenario.run()
    print(f"every node lost (checkpoint {saved} stored, rank 0 at iteration {before}): a new "
          f"cluster in {up:.1f} s; submit --resume to its first logged iteration "
          f"{resumed - submitted:.1f} s ({resumed - started:.1f} s with the cluster); restored "
          f"from {restored[-1] if restored else 'nothing'}: {before - int(restored[-1])} "
          f"iterations trained again (checkpoint period {scenario.period}; uploading at the loss: "
          f"{uploading or 'none'}); run {run.info.status}, exit {again.returncode}",
          flush=True)


def long_period(label: str, iters: int, period: int, storage: str | None) -> list[float]:
    """Rank 0's blocked seconds per checkpoint in a 2-worker demo run with no kill."""
    extra = (f"run.storage_path={storage}", CREDENTIALS) if storage else ()
    with tempfile.TemporaryDirectory() as workdir:
        subprocess.run(submit_cmd(iters, 2, f"solver.checkpoint_period={period}", *SEEDED,
                                  *extra), cwd=workdir, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = "".join(p.read_text() for p in
                      Path(workdir, ".orchestrator", "output").glob("*/log.txt"))
    waits = checkpoint_waits(log)
    blocked, saving = waits["blocked"], waits["saving"]
    print(f"{label}, a checkpoint every {period}: blocked per checkpoint median "
          f"{statistics.median(blocked):.3f} s (max {max(blocked):.3f} s, {len(blocked)} "
          f"checkpoints; the local save {statistics.median(saving):.3f} s of it)", flush=True)
    return blocked


def local_against_s3(s3: Server, args: argparse.Namespace) -> None:
    """Local and S3 runs in alternation; the median of the pairs' ratios."""
    create_bucket(s3.url, "bench-storage")
    storage = s3_storage_uri(s3.url, "bench-storage")
    stress, blocked, restart = [], [], []
    for pair in range(1, args.repeats + 1):
        if not args.skip_restart:
            local = one_storage(f"[{pair}] local disk", args.iters, None)
            remote = one_storage(f"[{pair}] S3", args.iters, storage)
            stress.append(statistics.median(remote.blocked) / statistics.median(local.blocked))
            restart.append(remote.seconds / local.seconds)
        near = long_period(f"[{pair}] local disk", args.long_iters, args.long_period, None)
        far = long_period(f"[{pair}] S3", args.long_iters, args.long_period, storage)
        blocked.append(statistics.median(far) / statistics.median(near))
        print(f"[{pair}] S3/local: blocked per checkpoint {blocked[-1]:.2f}x"
              + (f" (every 5: {stress[-1]:.2f}x), worker restart {restart[-1]:.2f}x"
                 if restart else "") + f" (load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"S3/local over {args.repeats} pairs (median): blocked per checkpoint "
          f"{statistics.median(blocked):.2f}x at a period of {args.long_period} (goal <= 1.10x; "
          f"pairs {', '.join(f'{r:.2f}' for r in blocked)})", flush=True)
    if restart:
        print(f"  every 5 iterations (an upload always in flight) {statistics.median(stress):.2f}x"
              f", worker restart {statistics.median(restart):.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40,
                        help="solver.max_iter (at least 20: the worker is killed after 9)")
    parser.add_argument("--period", type=int, default=15,
                        help="checkpoint period of the every-node run (the redone-work bound "
                        "holds while one upload takes less than a period)")
    parser.add_argument("--long-period", type=int, default=20,
                        help="checkpoint period of the runs without a kill (longer than one "
                        "upload)")
    parser.add_argument("--long-iters", type=int, default=100,
                        help="solver.max_iter of the runs without a kill")
    parser.add_argument("--skip-restart", action="store_true",
                        help="leave out the runs with a worker kill (every 5 iterations)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="local/S3 pairs, alternating (the ratio is the pairs' median)")
    parser.add_argument("--s3-nice", type=int, default=0,
                        help="the S3 server's nice value (10: it yields the CPU to training, "
                        "as storage on other machines would)")
    parser.add_argument("--skip-every-node", action="store_true")
    parser.add_argument("--skip-local-s3", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"({os.cpu_count()} CPUs); the S3 server at nice {args.s3_nice}", flush=True)
    os.environ.update(S3_ENV)
    with tempfile.TemporaryDirectory() as root:
        s3 = start_s3(Path(root), nice=args.s3_nice)
        try:
            if not args.skip_local_s3:
                local_against_s3(s3, args)
            if not args.skip_every_node:
                every_node(Path(root), s3, args.iters, args.period)
        finally:
            s3.stop()
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
