"""Panoptic pre-flight: bad panoptic data exits 2 before Ray, naming the file and the segment;
missing stuff maps are derived without touching the dataset's files (into the data cache when
the dataset cannot be written); a panoptic config needs panoptic data; the cfg's semantic head
gets its class count from the data. All on real generated files, through the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.data import synth
from tests.conftest import REPO, TINY_JOB, write_spec

runner = CliRunner()
PANOPTIC_DEMO = REPO / "configs/blendmask/blendmask_R_18_panoptic_demo.yaml"


def dataset(workdir: Path) -> Path:
    """A generated panoptic set (4 train images, 32 px, 2 stuff classes) under ``workdir``."""
    synth.generate(workdir / "ds", num_images=5, size=32, seed=0, stuff_classes=2)
    return workdir / "ds"


def train_files(ds: Path, **extra: str) -> list[str]:
    fields = {"json_file": ds / "annotations/instances_train.json", "image_root": ds / "train",
              "panoptic_json": ds / "annotations/panoptic_train.json",
              "panoptic_root": ds / "panoptic_train", **extra}
    inner = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return ["data.synthetic=null", f"data.train={{{inner}}}"]


def edit_json(ds: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = ds / "annotations/panoptic_train.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _drop_first_segment(doc: dict[str, Any]) -> None:
    doc["annotations"][0]["segments_info"].pop(0)


def _extra_segment(doc: dict[str, Any]) -> None:
    doc["annotations"][0]["segments_info"].append(
        {"id": 999, "category_id": 101, "area": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0})


def _unknown_category(doc: dict[str, Any]) -> None:
    doc["annotations"][0]["segments_info"][0]["category_id"] = 77


def _missing_image(doc: dict[str, Any]) -> None:
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != 2]


def _bad_isthing(doc: dict[str, Any]) -> None:
    doc["categories"][-1]["isthing"] = 2


def _renamed_thing(doc: dict[str, Any]) -> None:
    doc["categories"][0]["name"] = "disc"


def _small_png(ds: Path) -> None:
    path = ds / "panoptic_train" / "000001.png"
    Image.open(path).resize((16, 16), Image.NEAREST).save(path)


# case -> (break the dataset, text the message must contain; {png} is PNG 000001's path)
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "PNG segment not in the json": (lambda ds: edit_json(ds, _drop_first_segment),
                                    "{png}: segment 1: in the PNG but not in segments_info"),
    "json segment not in the PNG": (lambda ds: edit_json(ds, _extra_segment),
                                    "{png}: segment 999: in segments_info but not in the PNG"),
    "unknown category": (lambda ds: edit_json(ds, _unknown_category),
                         "{png}: segment 1: category_id 77 is not in the categories"),
    "PNG sized unlike its image": (_small_png, "{png}: PNG is 16x16 but image 1 is 32x32"),
    "image ids disagree": (lambda ds: edit_json(ds, _missing_image),
                           "image_id 2 of {json} has no panoptic annotation"),
    "isthing not 0/1": (lambda ds: edit_json(ds, _bad_isthing),
                        "{pan}: category 102 (grass): isthing must be 0 or 1, got 2"),
    "thing categories disagree": (lambda ds: edit_json(ds, _renamed_thing),
                                  "{pan}: thing category 1 is 'disc' here but 'circle' in {json}"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_panoptic_data_exits_2_naming_file_and_segment(workdir: Path, case: str) -> None:
    ds = dataset(workdir)
    breaks, expected = CASES[case]
    breaks(ds)
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = runner.invoke(app, ["submit", str(job), "--dry-run", *train_files(ds)])
    assert result.exit_code == 2, result.output
    message = expected.format(png=ds / "panoptic_train" / "000001.png",
                              json=ds / "annotations/instances_train.json",
                              pan=ds / "annotations/panoptic_train.json")
    # the console wraps long paths anywhere: compare without any whitespace
    assert "".join(message.split()) in "".join(result.output.split()), result.output
    assert not (workdir / "mlflow.db").exists()


def test_missing_stuff_maps_are_derived_and_dataset_files_kept(workdir: Path,
                                                              caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    ds = dataset(workdir)
    made = digests(ds / "panoptic_stuff_train")
    shutil.rmtree(ds / "panoptic_stuff_train")
    before = digests(ds)
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = runner.invoke(app, ["submit", str(job), "--dry-run", *train_files(ds)])
    assert result.exit_code == 0, result.output
    assert "derived 4 stuff map(s) from the panoptic PNGs" in caplog.text
    after = digests(ds)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed
    assert {k.removeprefix("panoptic_stuff_train/"): v for k, v in after.items()
            if k not in before} == made  # and the maps are the generator's, byte for byte
    # the instance-only config trains on panoptic data with a note
    assert "training the thing instances only" in " ".join(result.output.split())


def test_unwritable_sem_seg_root_derives_into_the_data_cache(workdir: Path) -> None:
    from orchestrator.launch.prepared import prepare
    from orchestrator.spec import load_spec

    ds = dataset(workdir)
    (workdir / "afile").write_text("", encoding="utf-8")  # a folder cannot be made under it
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    before = digests(ds)
    prepared = prepare(load_spec(job, train_files(ds, sem_seg_root=str(workdir / "afile/x"))))
    stuff = Path(str(prepared.data.train.sem_seg_root))
    assert stuff.parent == workdir / ".orchestrator" / "datasets" / "stuff-maps"
    assert sorted(p.name for p in stuff.iterdir()) == [f"{i:06d}.png" for i in range(1, 5)]
    assert digests(ds) == before


def test_panoptic_config_needs_panoptic_data(workdir: Path) -> None:
    text = TINY_JOB.replace("arch: mask_rcnn", "arch: blendmask").replace(
        str(REPO / "configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml"), str(PANOPTIC_DEMO))
    job = write_spec(workdir / "tiny.yaml", text)
    refused = runner.invoke(app, ["submit", str(job), "--dry-run"])
    assert refused.exit_code == 2, refused.output
    assert "has no panoptic annotations; give data.train.panoptic_json and " \
        "data.train.panoptic_root" in " ".join(refused.output.split())
    accepted = runner.invoke(app, ["submit", str(job), "--dry-run",
                                   "data.synthetic.stuff_classes=2"])
    assert accepted.exit_code == 0, accepted.output


def test_semantic_head_classes_come_from_the_data(workdir: Path) -> None:
    """S stuff classes + "things": the cfg worker and pre-flight build, and the head built."""
    from orchestrator.launch.preflight import Context, check_cfg, check_model
    from orchestrator.launch.prepared import prepare
    from orchestrator.spec import load_spec

    text = TINY_JOB.replace("arch: mask_rcnn", "arch: blendmask").replace(
        str(REPO / "configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml"), str(PANOPTIC_DEMO))
    job = write_spec(workdir / "tiny.yaml", text)
    ctx = Context(prepare(load_spec(job, ["data.synthetic.stuff_classes=3"])))
    check_cfg(ctx)
    assert ctx.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 4
    assert ctx.cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 255
    assert ctx.cfg.MODEL.FCOS.NUM_CLASSES == 4  # the things, as before
    check_model(ctx)
    assert ctx.model.state_dict()["panoptic_module.predictor.weight"].shape[0] == 4


def test_panoptic_jobs_validate_and_dry_run(workdir: Path) -> None:
    """The demo is the plain BlendMask demo plus stuff classes, the panoptic config and a
    third more iterations (a second task on the same features); the COCO job is
    Panoptic/R_50_3x's recipe (its dry run needs no COCO files)."""
    from orchestrator.spec import load_spec

    demo, plain = (load_spec(REPO / f"jobs/{n}.yaml")
                   for n in ("demo-blendmask-panoptic", "demo-blendmask"))
    assert plain.solver.max_iter is not None
    assert demo.solver.max_iter == plain.solver.max_iter * 4 // 3
    assert demo.solver.model_copy(update={"max_iter": plain.solver.max_iter}) == plain.solver
    assert demo.resources == plain.resources
    assert demo.data.synthetic is not None and plain.data.synthetic is not None
    assert demo.data.synthetic.model_copy(update={"stuff_classes": 0}) == plain.data.synthetic
    assert demo.data.synthetic.stuff_classes == 3
    for name, expected in (("demo-blendmask-panoptic", ["600 iters", "2 x 2 images (cpu"]),
                           ("blendmask-panoptic", ["270000 iters", "210000, 250000",
                                                   "16 (reference 16, scale 1)"])):
        job = str(REPO / f"jobs/{name}.yaml")
        assert runner.invoke(app, ["validate", job]).exit_code == 0
        result = runner.invoke(app, ["submit", job, "--dry-run"])
        assert result.exit_code == 0, result.output
        for text in [*expected, "nothing started"]:
            assert text in result.output, text


def test_instance_only_test_set_of_a_panoptic_run_is_a_note(workdir: Path) -> None:
    from rich.console import Console

    from orchestrator.launch.preflight import run_checks
    from orchestrator.launch.prepared import prepare
    from orchestrator.spec import load_spec

    ds = dataset(workdir)
    text = TINY_JOB.replace("arch: mask_rcnn", "arch: blendmask").replace(
        str(REPO / "configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml"), str(PANOPTIC_DEMO))
    job = write_spec(workdir / "tiny.yaml", text)
    test = (f"data.test={{json_file: {ds / 'annotations/instances_val.json'}, "
            f"image_root: {ds / 'val'}}}")
    console = Console(record=True, width=200)
    run_checks(prepare(load_spec(job, [*train_files(ds), test])), "plan", console=console)
    assert "data.test has no panoptic annotations: evaluation reports box and mask AP only" \
        in console.export_text()
