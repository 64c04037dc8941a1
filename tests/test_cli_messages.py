"""Messages reach the user as written (no Rich markup eaten), and bad arguments end with a
message and exit 2, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.conftest import REPO, TINY_JOB, write_spec

runner = CliRunner()


@pytest.mark.parametrize(("override", "shown"), [
    ("resources.workers=[4, 2]", "workers range [4, 2] must be [min, max]"),
    ("name=[x, y, w, h]", "(got ['x', 'y', 'w', 'h'])"),
    ("solver.reference_lr=.nan", "(got nan)"),
    ("solver.steps=[nan]", "solver.steps.0: Input should be a finite number (got 'nan')"),
    ("solver.steps=[2]", "steps as fractions must lie in (0, 1), got [2.0]"),
    ("model.opts=[MODEL.X]", "got an odd number of items: ['MODEL.X']"),
])
def test_error_messages_keep_brackets_and_nan(workdir: Path, override: str, shown: str) -> None:
    write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = runner.invoke(app, ["submit", "tiny.yaml", "--dry-run", override])
    assert result.exit_code == 2, result.output
    assert shown in " ".join(result.output.split()), result.output


def test_validate_shows_paths_as_written(workdir: Path) -> None:
    folder = workdir / "[red]specs"
    folder.mkdir()
    write_spec(folder / "a.yaml", TINY_JOB)
    write_spec(folder / "b.yaml", TINY_JOB.replace("max_iter", "[bold]max_iter"))
    result = runner.invoke(app, ["validate", str(folder)])
    assert result.exit_code == 2
    assert "[red]specs/a.yaml" in result.output and "[bold]max_iter" in result.output


def test_no_rich_markup_in_sources() -> None:
    """Consoles print with markup off (cli.py), so a ``[red]...[/]`` tag would show as is:
    colour goes through ``style=`` or ``Text``."""
    tags = re.compile(r"\[(/|/?(bold|red|green|yellow|dim|blue|cyan|magenta|italic))\]")
    for path in (REPO / "orchestrator").rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not tags.search(line), f"{path}:{number}: {line.strip()}"


BAD_ARGUMENTS = [
    ["ui", "--port", "99999"],
    ["ui", "--port", "0"],
    ["ui", "--tracking-uri", "garbage://x"],
    ["ui", "--tracking-uri", "http://u:pw@127.0.0.1:1"],
    ["runs", "compare", "nope", "--tracking-uri", "foo://bar"],
    ["runs", "import", "missing.json"],
    ["data", "synth", "out", "--num-images", "0"],
    ["data", "check", "tiny.yaml", "--images", ".", "--workers", "0"],
    ["predict", "--run", "x", "nothing.png"],
    ["predict", "--run", "x", "tiny.yaml", "--score", "2"],
    ["validate", "nonexistent.yaml"],
    ["submit", "tiny.yaml", "a"],
    ["submit", "tiny.yaml", "--dry-run", "tracking.tracking_uri=nope://x"],
]


@pytest.mark.parametrize("args", BAD_ARGUMENTS, ids=" ".join)
def test_bad_arguments_exit_2_without_a_traceback(workdir: Path, args: list[str]) -> None:
    write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip() and "Traceback" not in result.output
    assert "pw" not in result.output  # credentials in a URI are never echoed


BOOM = """
import sys
from orchestrator.cli import _exits, app, main

@app.command("boom")
@_exits
def boom() -> None:
    raise RuntimeError("a bug near [x, y, w, h]")

main()
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_an_unexpected_error_is_one_line_unless_verbose(workdir: Path, verbose: bool) -> None:
    """A real process whose command has a bug: one line and exit 1; the traceback only
    with -v."""
    args = [sys.executable, "-c", BOOM, *(["-v"] if verbose else []), "boom"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=workdir, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr
    assert "a bug near [x, y, w, h]" in done.stderr
    assert ("Traceback" in done.stderr) == verbose, done.stderr
    if not verbose:
        assert len(done.stderr.strip().splitlines()) <= 2, done.stderr
