"""Do BlendMask and CondInst learn? segm AP on the generated shapes set, untrained vs trained.

Each measurement is a real ``orchestrator submit`` of ``jobs/demo-<model>.yaml`` (embedded Ray,
2 CPU workers, evaluation on the val split at the end). "untrained" is the same job stopped
after one iteration at the first warm-up LR (0.1% of the base LR), i.e. the initial weights,
evaluated with score threshold 0 (its scores are all below the default 0.05). ``blendmask-dcn``
is the BlendMask demo with deformable res4/res5 blocks; s/iter is the median detectron2
iteration time of the trained run (compare it with ``blendmask``'s: same job otherwise).

    .venv/bin/python bench/models_learn.py                      # all three, ~7-10 min each
    .venv/bin/python bench/models_learn.py --arch condinst solver.max_iter=600
    .venv/bin/python bench/models_learn.py --arch blendmask --arch blendmask-dcn
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("condinst", "blendmask", "blendmask-dcn")


def _submit(job: Path, overrides: list[str], workdir: Path) -> dict[str, float]:
    """Run one job in ``workdir``; its final metrics from MLflow (plus ``s_per_iter``, the
    median of detectron2's per-iteration ``time``)."""
    cmd = [sys.executable, "-m", "orchestrator", "submit", str(job), *overrides]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    match = re.search(r"MLflow run id: (\w+)", proc.stdout)
    if match is None:
        raise SystemExit(f"no MLflow run id in the output:\n{proc.stdout[-3000:]}")
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    metrics = dict(client.get_run(match.group(1)).data.metrics)
    times = sorted(m.value for m in client.get_metric_history(match.group(1), "time"))
    metrics["s_per_iter"] = times[len(times) // 2] if times else float("nan")
    return metrics


def measure(arch: str, overrides: list[str], root: Path,
            untrained_too: bool = True) -> tuple[float, float, float, float]:
    """(untrained segm AP, trained segm AP, trained bbox AP, s/iter) for one demo model."""
    job = REPO / "jobs" / f"demo-{arch}.yaml"
    # Untrained scores sit below the default threshold; 0 lets COCO eval see every detection.
    untrained = (_submit(job, [*overrides, "solver.max_iter=1", "solver.steps=[]",
                               "eval.score_thresh=0.0", f"name=bench-{arch}-untrained"], root)
                 if untrained_too else {})
    trained = _submit(job, [*overrides, f"name=bench-{arch}-trained"], root)
    return (untrained.get("segm/AP", float("nan")), trained["segm/AP"], trained["bbox/AP"],
            trained["s_per_iter"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=ARCHS, help="default: all")
    parser.add_argument("--no-untrained", action="store_true",
                        help="skip the untrained baselines (prints nan for them)")
    parser.add_argument("overrides", nargs="*", help="job spec overrides, key.path=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="models-learn-") as tmp:
        for arch in args.arch or ARCHS:
            before, after, box, speed = measure(arch, args.overrides, Path(tmp),
                                                not args.no_untrained)
            print(f"{arch:13s} segm/AP untrained {before:6.2f}  trained {after:6.2f}"
                  f"  (bbox/AP {box:6.2f})  {speed:.3f} s/iter", flush=True)


if __name__ == "__main__":
    main()
