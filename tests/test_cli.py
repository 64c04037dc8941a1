"""The command line through Typer's runner: exit codes, messages, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import REPO, TINY_JOB, write_spec

runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def test_help_explains_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("submit", "validate", "data"):
        assert command in result.output
    assert "--dry-run" in invoke("submit", "--help").output


def test_validate_default_checks_every_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = invoke("validate")
    assert result.exit_code == 0, result.output
    assert "jobs/demo.yaml" in result.output and "jobs/mask_rcnn.yaml" in result.output


def test_validate_fails_on_any_invalid_spec(workdir: Path) -> None:
    (workdir / "jobs" / "nested").mkdir(parents=True)
    write_spec(workdir / "jobs" / "good.yaml", TINY_JOB)
    write_spec(workdir / "jobs" / "nested" / "bad.yaml", TINY_JOB.replace("max_iter", "maxiter"))
    result = invoke("validate")
    assert result.exit_code == 2
    assert "nested/bad.yaml" in result.output
    assert "solver.maxiter: unknown key (did you mean 'max_iter'?)" in result.output
    assert "1 of 2 job specs are invalid" in result.output


def test_dry_run_prints_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = invoke("submit", "jobs/mask_rcnn.yaml", "--dry-run", "resources.workers=16")
    assert result.exit_code == 0, result.output
    assert "32 (reference 16, scale 2)" in result.output
    assert "0.04 (reference 0.02)" in result.output
    assert "45000 iters" in result.output
    assert "nothing started" in result.output


@pytest.mark.parametrize(("spec_text", "extra", "message"), [
    (None, [], "job spec not found"),
    ("name: [oops\n", [], "not valid YAML"),
    (TINY_JOB.replace("reference_lr", "referense_lr"), [], "did you mean 'reference_lr'"),
    (TINY_JOB, ["resources.workers=0"], "resources.workers"),
    (TINY_JOB.replace("synthetic: {num_images: 12, size: 64, seed: 1}",
                      "train: {json_file: nope.json, image_root: imgs}"), [],
     "annotation file not found"),
    (TINY_JOB, ["model.config=configs/none.yaml"], "model.config: 'configs/none.yaml' not found"),
    (TINY_JOB, ["resources.gpus_per_worker=1"], "GPUs but this machine has 0"),
])
def test_bad_input_exits_2_and_leaves_no_running_run(
        workdir: Path, spec_text: str | None, extra: list[str], message: str) -> None:
    job = workdir / "job.yaml"
    if spec_text is not None:
        write_spec(job, spec_text)
    result = invoke("submit", str(job), *extra)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    if (workdir / "mlflow.db").exists():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert all(r.info.status != "RUNNING" for r in runs)


def test_data_synth_writes_and_refuses_to_clobber(workdir: Path) -> None:
    result = invoke("data", "synth", "shapes", "--num-images", "6", "--size", "64")
    assert result.exit_code == 0, result.output
    assert (workdir / "shapes" / "annotations" / "instances_train.json").is_file()
    again = invoke("data", "synth", "shapes", "--num-images", "7", "--size", "64")
    assert again.exit_code == 2
    assert "shapes" in again.output


def test_data_synth_with_stuff_classes_writes_panoptic_files(workdir: Path) -> None:
    from orchestrator.data.panoptic import check_panoptic

    result = invoke("data", "synth", "pan", "--num-images", "4", "--size", "32",
                    "--stuff-classes", "2")
    assert result.exit_code == 0, result.output
    root = workdir / "pan"
    for split in ("train", "val"):
        assert check_panoptic(root / "annotations" / f"panoptic_{split}.json",
                              root / f"panoptic_{split}") == []
        assert any((root / f"panoptic_stuff_{split}").glob("*.png"))
    too_many = invoke("data", "synth", "pan9", "--stuff-classes", "9")
    assert too_many.exit_code == 2 and "--stuff-classes" in too_many.output
    assert not (workdir / "pan9").exists()


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.startswith("orchestrator ")


def _broken_dataset(workdir: Path) -> Path:
    """A synthetic set whose first image claims the wrong size (SizeMismatchError in training)."""
    import json

    from orchestrator.data import synth

    made = synth.generate(workdir / "shapes", num_images=6, size=64, seed=0)
    doc = json.loads(made.train.json_file.read_text(encoding="utf-8"))
    doc["images"][0]["width"] = 99
    made.train.json_file.write_text(json.dumps(doc), encoding="utf-8")
    spec = TINY_JOB.replace(
        "synthetic: {num_images: 12, size: 64, seed: 1}",
        f"train: {{json_file: {made.train.json_file}, image_root: {made.train.image_root}}}")
    return write_spec(workdir / "job.yaml", spec)


def test_submit_refuses_a_dataset_with_blocking_defects(workdir: Path) -> None:
    job = _broken_dataset(workdir)
    result = invoke("submit", str(job), "--dry-run")
    assert result.exit_code == 2, result.output
    assert "data check failed" in result.output and "--skip-data-check" in result.output
    assert not (workdir / "mlflow.db").exists()
    skipped = invoke("submit", str(job), "--dry-run", "--skip-data-check")
    assert skipped.exit_code == 0, skipped.output
    assert "data check skipped" in skipped.output


def test_data_help_names_every_data_command() -> None:
    from orchestrator.cli import data_app

    names = [c.name for c in data_app.registered_commands]
    assert sorted(names) == ["check", "synth"], names  # a new command: name it in the help
    summary = str(data_app.info.help)
    shown = " ".join(invoke("data", "--help").output.split())
    for name in names:
        assert f" {name} " in f" {summary} ", summary
    assert " ".join(summary.split()[:6]) in shown


def test_readme_tells_every_checkpoint_predict_accepts() -> None:
    """predict --checkpoint takes final, best or an iteration: README must not say less."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Predictions", 1)[1].split("\n## ", 1)[0]
    text = " ".join(section.split())
    assert "`--checkpoint` picks the weights: `final`" in text
    assert "`best`" in text and "an iteration number" in text
    assert "accepts `final` only" not in text
    shown = " ".join(invoke("predict", "--help").output.split())
    assert "final|best|ITER" in shown
