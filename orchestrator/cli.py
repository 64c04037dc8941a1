"""The ``orchestrator`` command line: thin Typer commands over library functions.

Exit codes: 0 success, 2 bad input (spec, data, arguments), 1 the job failed.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from orchestrator import __version__
from orchestrator.errors import InputError, OrchestratorError

__all__ = ["app", "main"]

app = typer.Typer(
    name="orchestrator",
    help="Train detectron2 instance-segmentation models on Ray, tracked in MLflow.\n\n"
    "Start with: orchestrator submit jobs/demo.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: generate the synthetic shapes set.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def _exits(func: F) -> F:
    """Turn our errors into a one-line message and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OrchestratorError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        console.print(f"orchestrator {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Train detectron2 instance-segmentation models on Ray, tracked in MLflow."""


@app.command()
@_exits
def submit(
    job: Annotated[Path, typer.Argument(help="Job spec, e.g. jobs/demo.yaml.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key.path=value overrides, e.g. resources.workers=4 solver.max_iter=100.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Validate, check the data, print the scaling plan; start nothing.")]
    = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show the workers' detectron2 logs.")] = False,
) -> None:
    """Validate JOB, check its data, print the scaling plan, then train and track it."""
    from orchestrator.launch.submit import FINAL_METRICS, plan_table, prepare
    from orchestrator.spec import load_spec

    spec = load_spec(job, overrides or [])
    prepared = prepare(spec, strict=not dry_run)
    console.print(plan_table(prepared))
    if dry_run:
        console.print("dry run: nothing started")
        return
    from orchestrator.launch.submit import submit as run_submit

    started = time.monotonic()
    outcome = run_submit(prepared, console=console, verbose=verbose)
    shown = {k: outcome.metrics[k] for k in FINAL_METRICS if k in outcome.metrics}
    summary = "  ".join(f"{k} {v:.2f}" for k, v in shown.items()) or "no evaluation metrics"
    console.print(f"finished in {time.monotonic() - started:.0f}s: {summary}")
    console.print(f"MLflow run id: {outcome.run_id}")


@app.command()
@_exits
def validate(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Spec files or folders (searched recursively). Default: jobs/.")] = None,
) -> None:
    """Check job specs (every *.yaml under jobs/ by default); exit 2 if any is invalid."""
    from orchestrator.spec import find_specs, load_spec

    files = find_specs(paths or [Path("jobs")])
    if not files:
        raise InputError(f"no job specs found in {', '.join(map(str, paths or [Path('jobs')]))}")
    failures = 0
    for path in files:
        try:
            load_spec(path)
            console.print(f"[green]ok[/]      {path}", highlight=False)
        except InputError as exc:
            failures += 1
            err_console.print(f"[red]invalid[/] {exc}", highlight=False)
    if failures:
        raise InputError(f"{failures} of {len(files)} job specs are invalid")


@data_app.command("synth")
@_exits
def data_synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    num_images: Annotated[int, typer.Option(help="Images in total (train + val).")] = 200,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Same seed, same dataset.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a different dataset there.")] = False,
) -> None:
    """Write the deterministic synthetic shapes set (COCO json + PNGs, train and val)."""
    from orchestrator.data import synth

    try:
        made = synth.generate(out_dir, num_images=num_images, size=size, seed=seed,
                              overwrite=overwrite)
    except (ValueError, FileExistsError) as exc:
        raise InputError(str(exc)) from None
    for split in (made.train, made.val):
        console.print(f"{split.name}: {split.num_images} images, {split.json_file}")


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
