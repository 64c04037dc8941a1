"""``orchestrator predict`` on a real tiny run: PNGs, COCO JSON, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.inference.demo import DemoRun, demo_run

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return demo_run(tmp_path_factory)


def predict(demo: DemoRun, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["predict", "--tracking-uri", demo.tracking_uri, *args])
    return result.exit_code, result.output


def test_predictions_are_drawn_and_exported(demo: DemoRun, tmp_path: Path) -> None:
    code, output = predict(demo, "--run", demo.run_id, str(demo.val_dir), "--out",
                           str(tmp_path), "--score", "0.0")
    assert code == 0, output
    coco = COCO(str(tmp_path / "predictions.json"))
    classes = demo.workdir / "mlruns" / demo.run_id / "artifacts" / "classes.json"
    names = json.loads(classes.read_text(encoding="utf-8"))
    assert names == ["circle", "square", "triangle", "star"]  # the synthetic set's classes
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == names
    inputs = sorted(demo.val_dir.glob("*.png"))
    assert len(coco.getImgIds()) == len(inputs) >= 1
    for image in coco.loadImgs(coco.getImgIds()):
        source = np.asarray(Image.open(image["file_name"]).convert("RGB"))
        drawn = np.asarray(Image.open(tmp_path / f"{Path(image['file_name']).stem}.png"))
        assert drawn.shape == source.shape  # same size, RGB
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert anns, "score 0.0 keeps the model's detections"
        masks = [coco.annToMask(a) for a in anns]
        assert all(m.shape == source.shape[:2] for m in masks)
        covered = np.any(masks, axis=0)
        assert covered.any(), "an untrained mask head still predicts some pixels"
        assert (drawn != source).any(axis=2)[covered].mean() > 0.5


def test_unknown_run_exits_2(demo: DemoRun, tmp_path: Path) -> None:
    code, output = predict(demo, "--run", "no-such-run", str(demo.val_dir), "--out",
                           str(tmp_path))
    assert code == 2 and "no-such-run" in output


def test_run_without_checkpoint_exits_2(demo: DemoRun, tmp_path: Path) -> None:
    experiment = demo.client.get_run(demo.run_id).info.experiment_id
    empty = demo.client.create_run(experiment, run_name="empty").info.run_id
    demo.client.set_terminated(empty)
    code, output = predict(demo, "--run", empty, str(demo.val_dir), "--out", str(tmp_path))
    assert code == 2, output
    assert empty in output and "checkpoints/model_final.pth" in output


def test_a_corrupt_file_in_a_folder_is_skipped(demo: DemoRun, tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(demo.val_dir, images)
    (images / "broken.png").write_bytes(b"not a png at all")
    code, output = predict(demo, "--run", demo.run_id, str(images), "--out",
                           str(tmp_path / "out"), "--score", "0.0")
    assert code == 0, output
    assert "broken.png" in output and "skipped" in output
    written = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert written == sorted(p.name for p in demo.val_dir.glob("*.png"))


def test_an_unreadable_image_exits_2(demo: DemoRun, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    code, output = predict(demo, "--run", demo.run_id, str(broken), "--out",
                           str(tmp_path / "out"))
    assert code == 2 and "broken.jpg" in output


def test_missing_input_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "--run", "x", str(tmp_path / "nope.png")])
    assert result.exit_code == 2 and "nope.png" in result.output


def test_ray_checkpoints_by_iteration_and_best(demo: DemoRun, tmp_path: Path) -> None:
    """The run keeps a Ray Train checkpoint at its last iteration (2), where it was also
    evaluated, so that iteration and 'best' both load; others are listed in the error."""
    image = sorted(demo.val_dir.glob("*.png"))[0]
    for which in ("2", "best"):
        code, output = predict(demo, "--run", demo.run_id, str(image), "--out",
                               str(tmp_path / which), "--checkpoint", which)
        assert code == 0, output
        assert (tmp_path / which / image.name).is_file()
    code, output = predict(demo, "--run", demo.run_id, str(image), "--checkpoint", "99")
    assert code == 2 and "an iteration with a checkpoint (2)" in " ".join(output.split())
