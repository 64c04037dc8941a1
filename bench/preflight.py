"""How fast does ``orchestrator submit`` refuse what the pre-flight catches?

For each fail-fast case of the pre-flight, runs ``orchestrator submit jobs/demo.yaml <override>``
as a real process (as a user would) in one scratch working directory, and times it from start
to exit 2. Then times the whole pre-flight (every check, plan and launch stage) of the unmodified
``jobs/demo.yaml``, check by check, in a process of its own.

Baselines measured in the same run (timings on a shared 2-core machine are noisy):
``orchestrator --version`` (process start, no torch) and ``import detectron2.modeling`` (the
floor of any check that needs detectron2). Afterwards the scratch sqlite store must hold no run.

    .venv/bin/python bench/preflight.py [--limit 15]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
DEMO = REPO / "jobs" / "demo.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _timed(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - start, proc


def _files(work: Path) -> None:
    """Weights and datasets the cases point at."""
    import torch
    from PIL import Image

    (work / "junk.pth").write_text("not a checkpoint", encoding="utf-8")
    torch.save({"model": {"head.fc.weight": torch.zeros(3, 3)}}, work / "other.pth")
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(3)}},
               work / "shape.pth")
    (work / "afile").write_text("", encoding="utf-8")
    (work / "imgs").mkdir(exist_ok=True)
    images = []
    for i in range(1, 4):
        Image.new("RGB", (8, 8)).save(work / "imgs" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 8, "height": 8})
    cats = [{"id": 1, "name": "thing"}]
    for name, imgs in (("empty.json", []), ("unannotated.json", images)):
        (work / name).write_text(json.dumps({"images": imgs, "annotations": [],
                                             "categories": cats}), encoding="utf-8")


def _data(name: str) -> list[str]:
    return ["data.synthetic=null", f"data.train={{json_file: {name}, image_root: imgs}}"]


CASES: list[tuple[str, Callable[[], list[str]], str]] = [
    ("model.weights: missing file", lambda: ["model.weights=nope.pth"], "file not found"),
    ("model.weights: not a checkpoint", lambda: ["model.weights=junk.pth"],
     "not a checkpoint"),
    ("model.weights: another model", lambda: ["model.weights=other.pth"],
     "another architecture"),
    ("model.weights: shape mismatch", lambda: ["model.weights=shape.pth"],
     "Skip loading parameter"),
    ("model.weights: URL offline",
     lambda: [f"model.weights=http://127.0.0.1:{_free_port()}/R-50.pkl"], "cannot be downloaded"),
    ("run.output_dir not creatable", lambda: ["run.output_dir=afile/out"], "run.output_dir"),
    ("run.storage_path not creatable", lambda: ["run.storage_path=afile/ray"],
     "run.storage_path"),
    ("tracking server unreachable",
     lambda: [f"tracking.tracking_uri=http://127.0.0.1:{_free_port()}"], "no MLflow server"),
    ("dataset with 0 images", lambda: _data("empty.json"), "no_images"),
    ("0 usable annotations", lambda: _data("unannotated.json"), "usable annotation"),
    ("unknown key in model.opts", lambda: ["model.opts=[MODEL.RESNETS.DEPTHH, 18]"],
     "no config key"),
    ("workers not an integer", lambda: ["resources.workers=2.5"], "resources.workers"),
    ("workers a boolean", lambda: ["resources.workers=true"], "resources.workers"),
    ("workers over the ceiling", lambda: ["resources.workers=100000"], "ceiling"),
    ("more CPUs than this machine", lambda: ["resources.cpus_per_worker=4096"], "CPUs but"),
    ("duplicate YAML key", lambda: ["--dup"], "duplicate key"),
]

# Cases decided after importing torch/detectron2 (their floor is that import).
NEEDS_TORCH = {"model.weights: not a checkpoint", "model.weights: another model",
               "model.weights: shape mismatch", "unknown key in model.opts"}

TOTAL = """
import json, sys, time
from pathlib import Path
start = time.perf_counter()
from orchestrator.launch.preflight import run_checks
from orchestrator.launch.prepared import prepare
from orchestrator.launch.submit import check_data
from orchestrator.spec import load_spec
from rich.console import Console
quiet = Console(file=open("/dev/null", "w"))
steps = []
def timed(name, func):
    t = time.perf_counter()
    out = func()
    steps.append((name, time.perf_counter() - t))
    return out
spec = timed("spec", lambda: load_spec(Path(sys.argv[1])))
prepared = timed("data resolved", lambda: prepare(spec))
prepared = timed("data check", lambda: check_data(prepared, skip=False, console=quiet))
steps += run_checks(prepared, "plan", console=quiet)
steps += run_checks(prepared, "launch", console=quiet)
print(json.dumps({"steps": steps, "total": time.perf_counter() - start}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=15.0, help="seconds allowed per refusal")
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-preflight-") as tmp:
        work = Path(tmp)
        _files(work)
        spec = work / "demo.yaml"
        spec.write_text(DEMO.read_text(encoding="utf-8"), encoding="utf-8")
        dup = work / "dup.yaml"
        dup.write_text(spec.read_text(encoding="utf-8") + "solver:\n  max_iter: 10\n",
                       encoding="utf-8")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
        client.create_experiment("demo")
        warm, _ = _timed([py, "-m", "orchestrator", "submit", str(spec), "--dry-run"], work)
        print(f"dataset generated by a first --dry-run in {warm:.1f} s")
        rows, worst = [], 0.0
        for name, overrides, message in CASES:
            # The floor measured right before each case: load on a shared machine drifts.
            floor_args = ["-c", "import detectron2.modeling"] if name in NEEDS_TORCH \
                else ["-m", "orchestrator", "--version"]
            floor, _ = _timed([py, *floor_args], work)
            extra = overrides()
            target = str(dup) if extra == ["--dup"] else str(spec)
            extra = [] if extra == ["--dup"] else extra
            took, proc = _timed([py, "-m", "orchestrator", "submit", target, *extra], work)
            text = " ".join((proc.stdout + proc.stderr).split())
            ok = proc.returncode == 2 and message in text
            rows.append((name, took, ok, proc.returncode, floor))
            worst = max(worst, took)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        d2_s, _ = _timed([py, "-c", "import detectron2.modeling"], work)
        proc = subprocess.run([py, "-c", TOTAL, str(spec)], cwd=work, env=ENV,
                              capture_output=True, text=True, timeout=600)
        total = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None

    print(f"\n| case | submit -> exit 2 | floor | / floor | <= {args.limit:g} s | refused |")
    print("|---|---|---|---|---|---|")
    for name, took, ok, code, floor in rows:
        within = "yes" if took <= args.limit else "NO"
        kind = "import detectron2" if name in NEEDS_TORCH else "process start"
        print(f"| {name} | {took:.2f} s | {floor:.2f} s ({kind}) | {took / floor:.2f}x | "
              f"{within} | {'yes' if ok else f'NO (exit {code})'} |")
    print(f"\nMLflow runs created by the refusals: {len(runs)}")
    if total is None:
        print(f"pre-flight total on jobs/demo.yaml: failed\n{proc.stderr[-2000:]}")
    else:
        print(f"\npre-flight on jobs/demo.yaml (passes): {total['total']:.2f} s in all "
              f"(imports included; detectron2 import alone {d2_s:.2f} s)")
        for step, seconds in total["steps"]:
            print(f"  {step:<28} {seconds:6.2f} s")
    failed = [r for r in rows if not r[2]] or runs or total is None
    slow = worst > args.limit
    print(f"\nworst refusal {worst:.2f} s: {'within' if not slow else 'OVER'} {args.limit:g} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
