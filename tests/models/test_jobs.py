"""The BlendMask/CondInst job specs validate and plan (dry run) without starting anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import REPO

runner = CliRunner()
JOBS = ["blendmask", "condinst", "demo-blendmask", "demo-condinst", "blendmask-r101-dcn",
        "demo-blendmask-dcn"]


@pytest.mark.parametrize("name", JOBS)
def test_job_validates_and_dry_runs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    job = f"jobs/{name}.yaml"
    assert runner.invoke(app, ["validate", job]).exit_code == 0
    result = runner.invoke(app, ["submit", job, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "nothing started" in result.output


@pytest.mark.parametrize("name", ["blendmask", "condinst"])
def test_cluster_recipe_is_the_reference_one(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["submit", f"jobs/{name}.yaml", "--dry-run"])
    assert "16 (reference 16, scale 1)" in result.output and "90000 iters" in result.output
    assert "60000, 80000" in result.output


def test_dcn_recipe_is_the_reference_5x(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = runner.invoke(app, ["submit", "jobs/blendmask-r101-dcn.yaml", "--dry-run"])
    assert result.exit_code == 0, result.output
    for text in ("16 (reference 16, scale 1)", "400000 iters", "280000, 360000",
                 "20000 iters", "R_101_dcni3_5x.yaml"):
        assert text in result.output, text
