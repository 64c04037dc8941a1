"""No contradiction trains: what a spec says must agree with itself and with its model config,
and `validate` refuses offline everything `submit --dry-run` refuses, writing nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import REPO, TINY_JOB, write_spec

runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(("arch", "config", "builds"), [
    ("blendmask", "mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml", "GeneralizedRCNN"),
    ("mask_rcnn", "condinst/condinst_R_18_demo.yaml", "CondInst"),
    ("condinst", "blendmask/R_50_1x.yaml", "BlendMask"),  # through its _BASE_ chain
])
def test_an_arch_the_config_does_not_build_is_refused_naming_both(
        workdir: Path, arch: str, config: str, builds: str) -> None:
    spec = write_spec(workdir / "job.yaml", TINY_JOB)
    overrides = [f"model.arch={arch}", f"model.config={REPO / 'configs' / config}"]
    for command in (["validate", str(spec)], ["submit", str(spec), "--dry-run"]):
        if command[0] == "validate":  # validate takes no overrides: write them in
            text = TINY_JOB.replace("arch: mask_rcnn", f"arch: {arch}").replace(
                str(REPO / "configs/mask_rcnn/mask_rcnn_R_18_FPN_demo.yaml"),
                str(REPO / "configs" / config))
            write_spec(spec, text)
            result = invoke(*command)
        else:
            write_spec(spec, TINY_JOB)
            result = invoke(*command, *overrides)
        assert result.exit_code == 2, result.output
        assert f"'{arch}'" in result.output and builds in result.output, result.output


def test_opts_that_change_the_meta_architecture_count(workdir: Path) -> None:
    spec = write_spec(workdir / "job.yaml", TINY_JOB)
    result = invoke("submit", str(spec), "--dry-run",
                    "model.opts=[MODEL.META_ARCHITECTURE, CondInst]")
    assert result.exit_code == 2 and "CondInst" in result.output, result.output


@pytest.mark.parametrize("override", [
    "solver.reference_lr=.inf", "solver.gamma=.inf", "solver.clip_gradients=.inf",
    "solver.weight_decay=nan", "eval.score_thresh=.nan", "run.elastic_resize_check_s=inf",
    "resources.cpus_per_worker=.inf", "solver.steps=[0.5, .nan]",
])
def test_every_float_is_finite(workdir: Path, override: str) -> None:
    spec = write_spec(workdir / "job.yaml", TINY_JOB)
    result = invoke("submit", str(spec), "--dry-run", override)
    assert result.exit_code == 2, result.output
    field = override.split("=")[0]
    assert field in result.output and "finite" in result.output, result.output


def test_validate_refuses_what_the_dry_run_refuses_and_writes_nothing(workdir: Path) -> None:
    bad_steps = TINY_JOB.replace("warmup_iters: 2", "warmup_iters: 2\n  steps_unit: iter\n"
                                 "  steps: [3, 50]")
    spec = write_spec(workdir / "job.yaml", bad_steps)
    for command in (["validate", str(spec)], ["submit", str(spec), "--dry-run"]):
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        assert "solver.steps" in result.output and "max_iter" in result.output, result.output
    write_spec(spec, TINY_JOB.replace("name: tiny", "name: tiny\nrun: {env_from: [NOT_SET_X]}"))
    result = invoke("validate", str(spec))
    assert result.exit_code == 2 and "NOT_SET_X" in result.output, result.output
    write_spec(spec, TINY_JOB.replace("name: tiny", "name: tiny\nrun: {output_dir: job.yaml/x}"))
    result = invoke("validate", str(spec))
    assert result.exit_code == 2 and "run.output_dir" in result.output, result.output
    shutil.rmtree(workdir / ".orchestrator")  # the dry run's
    write_spec(spec, TINY_JOB)
    result = invoke("validate", str(spec))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["job.yaml"]  # nothing written


def test_validate_leaves_an_epoch_schedule_to_the_data(workdir: Path) -> None:
    spec = write_spec(workdir / "job.yaml", TINY_JOB.replace("max_iter: 6", "epochs: 2"))
    result = invoke("validate", str(spec))
    assert result.exit_code == 0, result.output
    assert "schedule not checked" in result.output


def test_validate_checks_every_child_of_a_sweep(workdir: Path) -> None:
    text = TINY_JOB.replace("warmup_iters: 2", "warmup_iters: 2\n  steps_unit: iter\n"
                            "  steps: [5]") + "sweep: {solver.max_iter: [20, 4]}\n"
    spec = write_spec(workdir / "job.yaml", text)
    result = invoke("validate", str(spec))
    assert result.exit_code == 2, result.output
    assert "solver.steps" in result.output and "max_iter=4" in result.output, result.output
