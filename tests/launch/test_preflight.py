"""Pre-flight: every cheap failure is refused before Ray starts, in seconds, with exit 2, the
field or file named, and no MLflow run created (in a real sqlite store)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import TINY_JOB, write_spec

runner = CliRunner()


def free_port() -> int:
    """A port nothing listens on (bound, then released): connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sqlite MLflow store with one experiment and no runs, copied into each test."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").create_experiment("orchestrator")
    return db


def runs_in(db: Path) -> list[object]:
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return list(client.search_runs([e.experiment_id for e in client.search_experiments()]))


def _coco(workdir: Path, *, images: int, annotated: int) -> list[str]:
    """A COCO set of ``images`` real 8x8 images, ``annotated`` of them with a box and mask."""
    from PIL import Image

    root = workdir / "imgs"
    root.mkdir()
    doc: dict = {"images": [], "annotations": [],
                 "categories": [{"id": 1, "name": "thing"}]}
    for i in range(1, images + 1):
        Image.new("RGB", (8, 8)).save(root / f"{i}.png")
        doc["images"].append({"id": i, "file_name": f"{i}.png", "width": 8, "height": 8})
        if i <= annotated:
            doc["annotations"].append({"id": i, "image_id": i, "category_id": 1,
                                       "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0,
                                       "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]})
    (workdir / "ann.json").write_text(json.dumps(doc), encoding="utf-8")
    return ["data.synthetic=null", f"data.train={{json_file: {workdir / 'ann.json'}, "
            f"image_root: {root}}}"]


def _weights(workdir: Path, kind: str) -> list[str]:
    import torch

    path = workdir / f"{kind}.pth"
    if kind == "junk":
        path.write_text("not a checkpoint", encoding="utf-8")
    elif kind == "other_model":
        torch.save({"model": {"head.fc.weight": torch.zeros(3, 3)}}, path)
    else:  # the right key with the wrong shape, in the backbone (not a class-count head)
        torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(3)}}, path)
    return [f"model.weights={path.name}"]


def _blocked(workdir: Path, field: str) -> list[str]:
    (workdir / "afile").write_text("", encoding="utf-8")
    return [f"{field}=afile/sub"]


# case -> (setup(workdir) -> overrides, text the message must contain)
CASES = {
    "weights missing": (lambda w: ["model.weights=nope.pth"], "model.weights:"),
    "weights not a checkpoint": (lambda w: _weights(w, "junk"),
                                 "not a checkpoint detectron2 can load"),
    "weights of another model": (lambda w: _weights(w, "other_model"),
                                 "is it for another architecture?"),
    "weights shape mismatch": (lambda w: _weights(w, "shape"), "Skip loading parameter "
                               "'backbone.bottom_up.stem.conv1.weight'"),
    "weights URL offline": (lambda w: [f"model.weights=http://127.0.0.1:{free_port()}/R-50.pkl"],
                            "cannot be downloaded"),
    "output_dir not creatable": (lambda w: _blocked(w, "run.output_dir"),
                                 "run.output_dir:"),
    "storage_path not creatable": (lambda w: _blocked(w, "run.storage_path"),
                                   "run.storage_path:"),
    "tracking server unreachable": (
        lambda w: [f"tracking.tracking_uri=http://127.0.0.1:{free_port()}"],
        "no MLflow server answers"),
    "no images": (lambda w: _coco(w, images=0, annotated=0), "no_images"),
    "no usable annotations": (lambda w: _coco(w, images=3, annotated=0),
                              "none of its 3 images has a usable annotation"),
    "unknown detectron2 key": (lambda w: ["model.opts=[MODEL.RESNETS.DEPTHH, 18]"],
                               "model.opts: detectron2 has no config key MODEL.RESNETS.DEPTHH "
                               "(did you mean MODEL.RESNETS.DEPTH?)"),
    "bad opts in a sweep child": (
        lambda w: ["sweep={resources.workers: [1, 2]}", "model.opts=[MODEL.NOPE, 1]"],
        "model.opts: detectron2 has no config key MODEL.NOPE"),
    "workers not an integer": (lambda w: ["resources.workers=2.5"], "resources.workers"),
    "workers a boolean": (lambda w: ["resources.workers=true"], "resources.workers"),
    "workers over the ceiling": (lambda w: ["resources.workers=100000"],
                                 "more than the ceiling of 256"),
    "more CPUs than the machine": (lambda w: ["resources.cpus_per_worker=4096"],
                                   "CPUs but this machine has"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_before_ray_with_no_run(workdir: Path, store: Path, case: str) -> None:
    setup, message = CASES[case]
    shutil.copy(store, workdir / "mlflow.db")
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    started = time.monotonic()
    result = runner.invoke(app, ["submit", str(job), *setup(workdir)])
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert runs_in(workdir / "mlflow.db") == []
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    assert elapsed < 60, f"{case}: {elapsed:.1f}s"  # the bench holds the 15 s line


def test_duplicate_yaml_keys_name_both_lines(workdir: Path) -> None:
    text = TINY_JOB.replace("  max_iter: 6\n", "  max_iter: 6\n  warmup_factor: 0.1\n"
                            "  max_iter: 60\n")
    job = write_spec(workdir / "tiny.yaml", text)
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if "max_iter" in line]
    for command in (["validate", str(job)], ["submit", str(job), "--dry-run"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert f"duplicate key 'max_iter': on line {lines[0]} and again on line {lines[1]}" \
            in " ".join(result.output.split())


def test_dry_run_stays_offline_and_checks_folders(workdir: Path) -> None:
    """--dry-run runs the offline checks (folders) but probes no server."""
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    unreachable = f"tracking.tracking_uri=http://127.0.0.1:{free_port()}"
    ok = runner.invoke(app, ["submit", str(job), "--dry-run", unreachable])
    assert ok.exit_code == 0, ok.output
    blocked = _blocked(workdir, "run.output_dir")
    bad = runner.invoke(app, ["submit", str(job), "--dry-run", *blocked])
    assert bad.exit_code == 2 and "afile is a file" in " ".join(bad.output.split())


def test_class_heads_of_another_dataset_are_a_note_not_an_error(workdir: Path) -> None:
    """Fine-tuning from weights trained on another class count: detectron2 skips the class
    heads on purpose, so the pre-flight passes and says so."""
    import torch
    from detectron2.modeling import build_model
    from rich.console import Console

    from orchestrator.launch.preflight import Context, check_cfg, run_checks
    from orchestrator.launch.prepared import prepare
    from orchestrator.spec import load_spec

    prepared = prepare(load_spec(write_spec(workdir / "tiny.yaml", TINY_JOB)))
    ctx = Context(prepared)
    check_cfg(ctx)
    cfg = ctx.cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    torch.save({"model": build_model(cfg).state_dict()}, workdir / "coco.pth")
    weighted = prepare(load_spec(workdir / "tiny.yaml", ["model.weights=coco.pth"]))
    console = Console(record=True, width=200)
    timings = run_checks(weighted, "launch", console=console)
    assert [name for name, _ in timings][-1] == "weights fit the model"
    notes = console.export_text()
    assert "class-count-dependent tensor(s)" in notes
    assert "roi_heads.box_predictor.cls_score.weight" in notes
    assert "of the model's" in notes and "weights load from the checkpoint" in notes


def test_unreachable_tracking_server_answers_in_seconds(workdir: Path) -> None:
    """The 257 s case, as a user runs it: a real process, a dead server, a quick exit 2."""
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(job),
                           f"tracking.tracking_uri=http://127.0.0.1:{free_port()}"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no MLflow server answers" in " ".join(proc.stderr.split())
    assert elapsed < 30, f"{elapsed:.1f}s"
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()


def test_any_http_answer_counts_as_a_reachable_server() -> None:
    """A server that answers, even 404 (no /health there), is up; a closed port is not."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from orchestrator.launch.preflight import _probe
    from orchestrator.secrets import redact_urls

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert _probe(f"http://user:secret@127.0.0.1:{server.server_port}/health") is None
    finally:
        server.shutdown()
        server.server_close()
    assert "Connection refused" in str(_probe(f"http://127.0.0.1:{free_port()}/health"))
    assert redact_urls("http://user:secret@host:5000/x") == "http://****@host:5000/x"
