"""``predict`` never writes over its inputs: refused before any run or model is looked up."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from orchestrator.cli import app

runner = CliRunner()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / name)
    return folder


@pytest.mark.parametrize(("source", "out", "clash"), [
    ("images", "images", "a.png"),            # the input folder holds a.png: it would be redrawn
    ("images/a.png", "images/a.png", "is a file"),  # --out is the input image itself
    ("images/b.jpg", "images/b.jpg", "is a file"),
])
def test_out_over_an_input_exits_2(images: Path, source: str, out: str, clash: str) -> None:
    root = images.parent
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    db = root / "mlflow.db"
    result = runner.invoke(app, ["predict", "--run", "no-such-run", "--tracking-uri",
                                 f"sqlite:///{db}", str(root / source), "--out", str(root / out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert clash in text and "--out" in text
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before
    assert not db.exists()  # refused before the tracking store was even opened


def test_out_beside_inputs_is_fine_when_nothing_clashes(images: Path) -> None:
    """Only a JPEG in the folder: its PNG lands beside it and overwrites nothing."""
    from orchestrator.inference.predict import check_outputs, output_paths

    (images / "a.png").unlink()
    paths = [images / "b.jpg"]
    check_outputs(paths, images)  # no error
    assert output_paths(paths, images) == [images / "b.png"]
