"""The ``orchestrator`` command line: thin Typer commands over library functions.

Exit codes: 0 success, 2 bad input (spec, data, arguments), 1 the job failed.
"""

from __future__ import annotations

import functools
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console
from rich.text import Text

from orchestrator import __version__
from orchestrator.errors import InputError, OrchestratorError, disk_reason, strip_sql
from orchestrator.launch.signals import EXIT_INTERRUPTED, RunInterrupted, raise_interrupt
from orchestrator.secrets import private_files, redact_assignment, redact_override, redact_urls

__all__ = ["app", "main"]

app = typer.Typer(
    name="orchestrator",
    help="Train detectron2 instance-segmentation models on Ray, tracked in MLflow.\n\n"
    "Start with: orchestrator submit jobs/demo.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: synth generates the synthetic shapes set; check checks a "
                       "COCO dataset against its images (--fix writes a corrected copy).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

# Markup off: messages carry user text ("[min, max]", paths, losses) that Rich would otherwise
# read as style tags and drop. Colour goes through ``style=`` or ``Text`` instead.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)
_tracebacks = {"on": False}  # set by -v: show the traceback of an unexpected error

F = TypeVar("F", bound=Callable[..., Any])


def _exits(func: F) -> F:
    """Turn our errors into a one-line message and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OrchestratorError as exc:
            if exc.exit_code == EXIT_INTERRUPTED:  # not an error: the user stopped it
                err_console.print(redact_urls(str(exc)), style="yellow", highlight=False)
            else:
                _error(strip_sql(exc))
                _disk_hint(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", style="yellow")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug, or an argument nothing checked: one line, no trace
            if _tracebacks["on"] or kwargs.get("verbose"):
                raise
            _error(f"unexpected {type(exc).__name__}: {strip_sql(exc)} (rerun with -v for the "
                   "traceback)")
            _disk_hint(exc)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _disk_hint(exc: BaseException) -> None:
    """A full disk (or quota, or read-only file system) behind a failure is told last, where
    it is seen, however long the message above it (a worker's traceback, say)."""
    reason = disk_reason(exc)
    if reason:
        _error(f"{reason}; free space where the job writes (the working folder, "
               "run.output_dir, run.storage_path, the tracking store) and run it again")


def _private(func: F) -> F:
    """Run data this command writes (sqlite store, artifacts, ``.orchestrator/``, the Ray
    session it starts) is readable by the user only."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with private_files():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _error(message: str) -> None:
    """``error: ...`` on stderr, credentials in URLs masked, the message shown as is."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", redact_urls(message)),
                      highlight=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"orchestrator {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show the traceback of an unexpected error.")] = False,
) -> None:
    """Train detectron2 instance-segmentation models on Ray, tracked in MLflow."""
    _tracebacks["on"] = verbose


AddressOption = Annotated[str | None, typer.Option(
    "--address", envvar="ORCHESTRATOR_ADDRESS",
    help="Ray cluster Jobs API, e.g. http://127.0.0.1:8265 (forwarded by `ray dashboard`). "
    "Default: run embedded on this machine.")]


@app.command()
@_exits
@_private
def submit(
    job: Annotated[Path, typer.Argument(help="Job spec, e.g. jobs/demo.yaml.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key.path=value overrides, e.g. resources.workers=4 solver.max_iter=100.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Validate, check the data, print the scaling plan; start nothing.")]
    = False,
    address: AddressOption = None,
    detach: Annotated[bool, typer.Option(
        "--detach", help="With --address: print the job id and return without following.")]
    = False,
    resume: Annotated[str | None, typer.Option(
        "--resume", metavar="RUN_ID", help="Continue a stopped or failed run (same MLflow run) "
        "from its latest checkpoint.")] = None,
    skip_data_check: Annotated[bool, typer.Option(
        "--skip-data-check", help="Train even if the data check finds blocking defects "
        "(recorded as an MLflow tag).")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show the workers' detectron2 logs.")] = False,
) -> None:
    """Validate JOB, check its data, print the scaling plan, then train and track it."""
    from orchestrator.launch.preflight import run_checks
    from orchestrator.launch.prepared import prepare
    from orchestrator.launch.submit import check_data, plan_table
    from orchestrator.spec import load_spec

    spec = load_spec(job, overrides or [])
    if address:
        _submit_remote(spec, address=address, detach=detach, dry_run=dry_run, resume=resume)
        return
    if spec.sweep:
        _submit_sweep(spec, dry_run=dry_run, resume=resume, skip_data_check=skip_data_check,
                      verbose=verbose)
        return
    prepared = check_data(prepare(spec, strict=not dry_run), skip=skip_data_check,
                          console=console)
    run_checks(prepared, "plan", console=console)
    console.print(plan_table(prepared))
    if dry_run:
        console.print("dry run: nothing started")
        return
    try:
        _submit_embedded(prepared, verbose=verbose, resume=resume)
    except RunInterrupted as exc:
        command = shlex.join(["orchestrator", "submit", str(job),
                              *map(redact_override, overrides or []), "--resume", exc.run_id])
        raise RunInterrupted(exc.run_id, f"{exc}; continue it with: {command}") from None


def _submit_embedded(prepared: Any, *, verbose: bool, resume: str | None) -> None:
    from orchestrator.launch.submit import FINAL_METRICS
    from orchestrator.launch.submit import submit as run_submit

    started = time.monotonic()
    outcome = run_submit(prepared, console=console, verbose=verbose, resume=resume)
    shown = {k: outcome.metrics[k] for k in FINAL_METRICS if k in outcome.metrics}
    summary = "  ".join(f"{k} {v:.2f}" for k, v in shown.items()) or "no evaluation metrics"
    console.print(f"finished in {time.monotonic() - started:.0f}s: {summary}")
    console.print(f"MLflow run id: {outcome.run_id}")


def _submit_sweep(spec: Any, *, dry_run: bool, resume: str | None, skip_data_check: bool,
                  verbose: bool) -> None:
    from rich.table import Table

    from orchestrator.launch.submit import FINAL_METRICS
    from orchestrator.launch.sweep import plan_sweep, run_sweep

    if resume:
        raise InputError("--resume continues one run: resume a sweep's child run with a spec "
                         "that has no sweep (its job.yaml artifact)")
    if dry_run:
        count = len(plan_sweep(spec, console=console, skip_data_check=skip_data_check))
        console.print(f"dry run: sweep of {count} trainings; nothing started")
        return
    outcome = run_sweep(spec, console=console, verbose=verbose, skip_data_check=skip_data_check)
    table = Table("assignment", "run id", *FINAL_METRICS, title="sweep results")
    for assignment, child in outcome.children:
        table.add_row(str(redact_assignment(assignment)), child.run_id or "",
                      *(f"{child.metrics.get(k, float('nan')):.2f}" for k in FINAL_METRICS))
    console.print(table)
    console.print(f"MLflow parent run id: {outcome.parent_run_id}")


def _submit_remote(spec: Any, *, address: str, detach: bool, dry_run: bool,
                   resume: str | None = None) -> None:
    """The cluster's driver re-checks data paths (they live on the cluster), so only the
    spec is checked here."""
    from orchestrator.errors import JobFailedError
    from orchestrator.launch import remote

    if dry_run:
        console.print(f"dry run: {spec.name} is valid; nothing submitted to {address}")
        return
    job_id = remote.submit_remote(spec, address=address, console=console, resume=resume)
    if detach:
        console.print(f"follow it with: orchestrator logs {job_id} --address {address}")
        return
    try:
        status = remote.follow(address, job_id, console)
    except KeyboardInterrupt:
        raise RunInterrupted(job_id, f"stopped following; Ray job {job_id} keeps running "
                             f"(stop it with: orchestrator stop {job_id} --address {address})"
                             ) from None
    console.print(f"Ray job {job_id}: {status}")
    if status != "SUCCEEDED":
        raise JobFailedError(f"Ray job {job_id} ended {status}")


@app.command()
@_exits
def validate(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Spec files or folders (searched recursively). Default: jobs/.")] = None,
) -> None:
    """Check job specs (every *.yaml under jobs/ by default) as --dry-run would, offline and
    writing nothing; exit 2 if any is invalid."""
    from orchestrator.launch.preflight import check_offline
    from orchestrator.spec import find_specs, load_spec

    files = find_specs(paths or [Path("jobs")])
    if not files:
        raise InputError(f"no job specs found in {', '.join(map(str, paths or [Path('jobs')]))}")
    failures = 0
    for path in files:
        try:
            note = check_offline(load_spec(path))
            console.print(Text.assemble(("ok", "green"), f"      {path}",
                                        f" ({note})" if note else ""), highlight=False)
        except InputError as exc:
            failures += 1
            err_console.print(Text.assemble(("invalid", "red"), f" {exc}"), highlight=False)
    if failures:
        raise InputError(f"{failures} of {len(files)} job specs are invalid")


@data_app.command("synth")
@_exits
def data_synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    num_images: Annotated[int, typer.Option(help="Images in total (train + val).")] = 200,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Same seed, same dataset.")] = 0,
    stuff_classes: Annotated[int, typer.Option(
        min=0, max=8, help="Background region classes (1-8): also write COCO panoptic files "
        "and stuff maps; 0 = instances only.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a different dataset there.")] = False,
) -> None:
    """Write the deterministic synthetic shapes set (COCO json + PNGs, train and val)."""
    from orchestrator.data import synth

    try:
        made = synth.generate(out_dir, num_images=num_images, size=size, seed=seed,
                              stuff_classes=stuff_classes, overwrite=overwrite)
    except (ValueError, FileExistsError) as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot write the dataset there ({exc})") from None
    for split in (made.train, made.val):
        console.print(f"{split.name}: {split.num_images} images, {split.json_file}")
        if split.panoptic_json is not None:
            console.print(f"{split.name}: panoptic {split.panoptic_json}, segments in "
                          f"{split.panoptic_root}, stuff maps in {split.sem_seg_root}")


@data_app.command("check")
@_exits
def data_check(
    ann: Annotated[Path, typer.Argument(
        metavar="ANN.json", help="COCO instances json, e.g. instances_train.json.")],
    images: Annotated[Path, typer.Option(
        "--images", metavar="DIR", help="Folder the json's file_name entries are relative to.")],
    fix: Annotated[Path | None, typer.Option(
        "--fix", help="Write a corrected copy here (never the input), then check it.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Let --fix replace an existing file.")] = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Threads reading image headers (default: CPUs + 4, max 32).")]
    = None,
    decode: Annotated[bool, typer.Option(
        "--decode", help="Also decode every image in full (threaded; slower) to find truncated "
        "or corrupt files.")] = False,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Check again even if the json and the image files (names, sizes, "
        "modification times) are unchanged since the check stored in .orchestrator/checks "
        "(and store the new result).")]
    = False,
) -> None:
    """Check a COCO dataset against its images; exit 2 on any error (warnings are fine).

    The result is kept in .orchestrator/checks/ of the current folder; an unchanged dataset
    is not read again (here, by submit, a resume or a sweep).
    """
    from contextlib import ExitStack

    from rich.progress import Progress

    from orchestrator.data.check_cache import cache_folder, cached_check
    from orchestrator.data.fix import fix_dataset

    with ExitStack() as stack:
        progress = None
        if console.is_terminal:
            bar = stack.enter_context(Progress(console=console, transient=True))
            task = bar.add_task("reading image headers", total=None)
            progress = lambda done, total: bar.update(task, completed=done, total=total)  # noqa: E731
        if fix is not None:
            summary = fix_dataset(ann, images, fix, overwrite=overwrite, workers=workers,
                                  progress=progress, decode=decode)
            console.print(summary.format(), highlight=False)
        report = cached_check(fix or ann, images, workers=workers, progress=progress,
                              decode=decode, cache=cache_folder(Path.cwd()), reuse=not no_cache,
                              note=lambda text: console.print(text, style="dim",
                                                              highlight=False))
    table = console.is_terminal and report.defects  # plain text for logs and pipes
    console.print(report.table() if table else report.format(), highlight=False)
    if report.has_errors:
        what = f"the fixed copy {fix} still has errors" if fix else "errors found"
        raise InputError(f"{what}: {', '.join(d.code for d in report.errors)}; "
                         f"to write a corrected copy run: {report.fix_command()}")
    console.print(Text.assemble(("ok", "green"), ": no errors",
                                " (see warnings above)" if report.defects else ""))


TrackingUri = Annotated[str | None, typer.Option(
    "--tracking-uri",
    help="MLflow store. Default: sqlite:///<cwd>/mlflow.db, as submit uses.")]


RequiredAddress = Annotated[str, typer.Option(
    "--address", envvar="ORCHESTRATOR_ADDRESS",
    help="Ray cluster Jobs API, e.g. http://127.0.0.1:8265.")]
JobId = Annotated[str, typer.Argument(help="Ray job (submission) id, as submit printed it.")]


@app.command("status")
@_exits
def job_status(job_id: JobId, address: RequiredAddress) -> None:
    """Show the state of a job submitted with --address."""
    from orchestrator.launch.remote import jobs_client

    info = jobs_client(address).get_job_info(job_id)
    console.print(f"{job_id}: {info.status.value}  {info.message or ''}".rstrip(),
                  highlight=False)


@app.command("logs")
@_exits
def job_logs(job_id: JobId, address: RequiredAddress,
             follow: Annotated[bool, typer.Option("--follow", "-f",
                                                  help="Stream until the job ends.")] = False,
             ) -> None:
    """Print the driver output of a submitted job."""
    from orchestrator.launch import remote

    if follow:
        remote.follow(address, job_id, console)
    else:
        console.out(remote.jobs_client(address).get_job_logs(job_id), end="", highlight=False)


@app.command("stop")
@_exits
def job_stop(
    job_or_run: Annotated[str, typer.Argument(
        metavar="JOB_OR_RUN_ID", help="With --address: the Ray job id submit printed. "
        "Without: an MLflow run id (a run trained on this machine, or one whose driver "
        "runs elsewhere but shares the tracking store).")],
    address: AddressOption = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Stop a job or run; its MLflow run ends KILLED.

    Without --address the run's driver is sent SIGTERM when it runs on this machine, asked
    through the run's tags (within its heartbeat, 15 s) when it runs elsewhere, and a run
    whose driver is gone is marked KILLED here."""
    if address:
        from orchestrator.launch.remote import stop_job

        console.print(stop_job(address, job_or_run), highlight=False)
        return
    from orchestrator.launch.stop import stop_run

    uri = _tracking_uri(tracking_uri)
    with _store_errors(uri):
        console.print(stop_run(job_or_run, tracking_uri=uri), highlight=False)


@app.command("list")
@_exits
def job_list(address: RequiredAddress) -> None:
    """List the jobs submitted to a cluster."""
    from rich.table import Table

    from orchestrator.launch.remote import jobs_client

    table = Table("job id", "status", "orchestrator job", "entrypoint")
    for info in jobs_client(address).list_jobs():
        table.add_row(info.submission_id or info.job_id or "", info.status.value,
                      (info.metadata or {}).get("orchestrator_job", ""), info.entrypoint)
    console.print(table)


runs_app = typer.Typer(help="MLflow runs: list them (stale ones too), import reference logs, "
                       "compare runs.",
                       no_args_is_help=True)
app.add_typer(runs_app, name="runs")

def _tracking_uri(uri: str | None) -> str:
    """The store to use, refused (exit 2) offline if MLflow could never open it."""
    from orchestrator.spec import tracking_uri_problem
    from orchestrator.tracking.run import default_tracking_uri

    problem = uri is not None and tracking_uri_problem(uri)
    if problem:
        raise InputError(f"--tracking-uri {redact_urls(uri or '')} {problem}")
    return uri or default_tracking_uri()


@contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """MLflow refusing the store these commands were pointed at is bad input, not a crash."""
    try:
        yield
    except OrchestratorError:
        raise
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException):
            raise
        raise InputError(f"--tracking-uri {redact_urls(uri)}: {exc}") from None


@runs_app.command("import")
@_exits
@_private
def runs_import(
    file: Annotated[Path, typer.Argument(
        help="detectron2 metrics.json or MMDetection log.json (told apart by content).")],
    name: Annotated[str | None, typer.Option(help="Run name. Default: from the file name.")]
    = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "orchestrator",
    iters_per_epoch: Annotated[int | None, typer.Option(
        help="MMDetection only: iterations per epoch (default: from the log).")] = None,
    batch: Annotated[int | None, typer.Option(
        help="Total batch the log was trained at (default: SOLVER.IMS_PER_BATCH of a "
             "config.yaml beside a detectron2 log, else the reference batch).")] = None,
    reference_batch: Annotated[int, typer.Option(
        help="Steps are iterations at this batch: your specs' solver.reference_batch.")] = 16,
    tracking_uri: TrackingUri = None,
) -> None:
    """Import a training log as a FINISHED MLflow run (detectron2 names, AP in percent, steps
    at the reference batch)."""
    from orchestrator.tracking.importer import import_log

    uri = _tracking_uri(tracking_uri)
    with _store_errors(uri):
        run_id = import_log(file, tracking_uri=uri, experiment=experiment, run_name=name,
                            iters_per_epoch=iters_per_epoch, batch=batch,
                            reference_batch=reference_batch)
    console.print(run_id, highlight=False)


@runs_app.command("compare")
@_exits
def runs_compare(
    runs: Annotated[list[str], typer.Argument(help="Run ids or run names.")],
    plot: Annotated[Path | None, typer.Option(
        help="Also write loss and AP curves to this PNG.")] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Show the params that differ and each metric's final (best) value, side by side."""
    from orchestrator.tracking.compare import compare_runs
    from orchestrator.tracking.compare_plot import plot_curves
    from orchestrator.tracking.compare_table import comparison_tables

    uri = _tracking_uri(tracking_uri)
    with _store_errors(uri):
        comparison = compare_runs(runs, tracking_uri=uri)
    for table in comparison_tables(comparison):
        console.print(table)
    if plot is not None:
        try:
            console.print(f"plot: {plot_curves(comparison, plot)}", highlight=False)
        except OSError as exc:
            raise InputError(f"--plot {plot}: cannot write it ({exc})") from None


@runs_app.command("list")
@_exits
def runs_list(
    stale: Annotated[bool, typer.Option(
        "--stale", help="Only RUNNING runs whose driver is gone (killed, its machine lost): "
        "resume them with submit --resume, or close them with orchestrator stop.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Newest runs shown (without --stale).")]
    = 20,
    tracking_uri: TrackingUri = None,
) -> None:
    """List the newest runs with their status and whether a driver still owns them."""
    from orchestrator.tracking.liveness import list_runs
    from orchestrator.tracking.runs_table import runs_table

    uri = _tracking_uri(tracking_uri)
    with _store_errors(uri):
        found = list_runs(uri, stale_only=stale, limit=limit)
    if stale and not found:
        console.print("no stale runs: every RUNNING run has a live driver")
        return
    console.print(runs_table(found, title="stale runs" if stale else "runs"))
    if stale:
        console.print("continue one with: orchestrator submit JOB.yaml --resume RUN_ID; "
                      "or close it with: orchestrator stop RUN_ID", highlight=False)


@app.command("ui")
@_exits
@_private
def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 5000,
    tracking_uri: TrackingUri = None,
) -> None:
    """Serve the MLflow UI over the project's runs on 127.0.0.1 until Ctrl-C."""
    from orchestrator.tracking.ui import start_ui

    uri = _tracking_uri(tracking_uri)
    if uri.split(":", 1)[0] in {"http", "https", "databricks"}:
        raise InputError(f"--tracking-uri {redact_urls(uri)}: ui serves a database store "
                         "(sqlite:///PATH, postgresql://...); that one has its own server")
    server = start_ui(uri, port=port)
    try:
        console.print(f"starting MLflow UI (log: {server.log_path}) ...", highlight=False)
        server.wait_ready(timeout=180)
        console.print(f"MLflow UI: {server.url}  (Ctrl-C stops it)", highlight=False)
        server.process.wait()
    finally:
        server.stop()


@app.command()
@_exits
def predict(
    run: Annotated[str, typer.Option(
        "--run", metavar="RUN_ID_OR_NAME", help="MLflow run id or run name, as submit printed.")],
    images: Annotated[Path, typer.Argument(
        metavar="IMAGE_OR_DIR", help="An image, or a folder of images (not recursive).")],
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="Where the PNGs and predictions.json go.")]
    = Path("predictions"),
    score: Annotated[float, typer.Option(
        "--score", min=0.0, max=1.0, help="Test score threshold: weaker detections are "
        "dropped.")] = 0.5,
    checkpoint: Annotated[str, typer.Option(
        "--checkpoint", metavar="final|best|ITER", help="final: model_final.pth from MLflow; "
        "best: the checkpoint at the evaluation with the highest mask AP; ITER: the Ray Train "
        "checkpoint of that iteration (from the run's local storage path).")] = "final",
    tracking_uri: TrackingUri = None,
    device: Annotated[str, typer.Option(
        "--device", help="cpu or cuda.")] = "cpu",
) -> None:
    """Draw a run's predictions on images: one PNG each plus a COCO-style predictions.json."""
    from orchestrator.inference import find_images, load_run, predict_with_progress
    from orchestrator.inference.predict import check_outputs

    paths = find_images(images)
    check_outputs(paths, out)
    uri = _tracking_uri(tracking_uri)
    with _store_errors(uri):
        loaded = load_run(run, tracking_uri=uri, score=score, device=device,
                          checkpoint=checkpoint)
    console.print(f"run {loaded.run_id} ({loaded.run_name}): {len(paths)} image(s)",
                  highlight=False)
    result = predict_with_progress(loaded, paths, out, console=console)
    if not result.written:
        why = result.skipped[0][1] if len(paths) == 1 else "no file in it is a readable image"
        raise InputError(f"{images}: {why}")
    for path, why in result.skipped:
        err_console.print(Text.assemble(("skipped", "yellow"), f" {path}: {why}"),
                          highlight=False)
    console.print(f"{len(result.written)} PNG(s) and {result.json_path} "
                  f"({result.num_predictions} predictions) in {out}", highlight=False)
    if result.panoptic_json is not None:
        console.print(f"panoptic segments (COCO panoptic format): {result.panoptic_json}",
                      highlight=False)


cluster_app = typer.Typer(help="A local multi-node Ray cluster on 127.0.0.1, to rehearse the "
                          "cluster path: submit --address works against it as against a "
                          "cloud head.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
ClusterState = Annotated[Path, typer.Option(
    "--state", help="The file that records the running cluster (addresses, node pids).")]
_CLUSTER_STATE = Path(".orchestrator/local-cluster.json")


@cluster_app.command("up")
@_exits
def cluster_up(
    nodes: Annotated[int, typer.Option(help="Ray nodes: the head plus NODES-1 workers.")] = 2,
    cpus_per_node: Annotated[float, typer.Option(help="CPUs each node offers (1 or more).")]
    = 1,
    detach: Annotated[bool, typer.Option(
        "--detach", help="Return once it is up; stop it with `cluster down`. Default: run "
        "until Ctrl-C.")] = False,
    state: ClusterState = _CLUSTER_STATE,
) -> None:
    """Start a head and NODES-1 worker nodes (own raylets, ports, CPUs) on 127.0.0.1."""
    from orchestrator.launch.local_cluster import ClusterProcess, check_arguments, read_state, serve

    check_arguments(nodes, cpus_per_node)
    if state.exists():
        raise InputError(f"--state {state}: a local cluster is recorded there already "
                         f"(at {read_state(state)['address']}); `orchestrator cluster down` "
                         "first, or pass another --state")

    def ready(address: str, gcs: str) -> None:
        console.print(f"{nodes} Ray node(s) up on 127.0.0.1, {cpus_per_node:g} CPU(s) each.\n"
                      f"  orchestrator submit JOB --address {address}\n"
                      f"  (ray.init / RAY_ADDRESS: {gcs}; state: {state})", highlight=False)

    if detach:
        cluster = ClusterProcess.start(nodes, cpus_per_node=cpus_per_node, state_path=state,
                                       log_path=state.with_suffix(".log"))
        ready(cluster.address, cluster.gcs_address)
        console.print("stop it with: orchestrator cluster down")
        return
    def running(cluster: Any) -> None:
        ready(cluster.address, cluster.gcs_address)
        console.print("Ctrl-C stops it.")

    serve(nodes, cpus_per_node=cpus_per_node, state_path=state, on_ready=running)


@cluster_app.command("down")
@_exits
def cluster_down(state: ClusterState = _CLUSTER_STATE) -> None:
    """Stop the local cluster (its supervisor, then any node process left), by pid."""
    from orchestrator.launch.local_cluster import read_state, stop_from_state

    was_up = stop_from_state(read_state(state))
    state.unlink(missing_ok=True)
    console.print("local cluster stopped" if was_up else "it had stopped already; cleaned up")


@cluster_app.command("add-node")
@_exits
def cluster_add_node(state: ClusterState = _CLUSTER_STATE) -> None:
    """Add a worker node to the running local cluster (rehearse a scale-up)."""
    import os
    import signal as sig

    from orchestrator.launch.local_cluster import read_state
    from orchestrator.launch.waiting import wait_until

    before = len(read_state(state)["nodes"])
    os.kill(int(read_state(state)["supervisor"]), sig.SIGUSR1)
    try:
        wait_until(lambda: len(read_state(state)["nodes"]) > before, timeout=120,
                   what="the new node did not come up within 120 s")
    except TimeoutError as exc:
        raise OrchestratorError(str(exc)) from None
    console.print(f"added {read_state(state)['nodes'][-1]['name']}")


@cluster_app.command("kill-node")
@_exits
def cluster_kill_node(
    name: Annotated[str, typer.Argument(help="Node name as `cluster up` recorded it, e.g. "
                                        "worker-1 (or head).")],
    state: ClusterState = _CLUSTER_STATE,
) -> None:
    """SIGKILL every process of one node at once (rehearse losing a machine); the state file
    marks it killed."""
    from orchestrator.launch.local_cluster import kill_node

    count = kill_node(state, name)
    console.print(f"killed {name}: {count} processes")


@cluster_app.command("preempt")
@_exits
def cluster_preempt(
    name: Annotated[str, typer.Argument(help="Node name as `cluster up` recorded it, e.g. "
                                        "worker-1.")],
    deadline: Annotated[int, typer.Option(
        min=1, help="Seconds from the notice to the kill (a spot reclaim gives 30-120).")] = 30,
    state: ClusterState = _CLUSTER_STATE,
) -> None:
    """Rehearse a spot reclaim: ask Ray's GCS to drain NAME for preemption with a deadline
    (what an autoscaler asks), then SIGKILL every process of it when the deadline passes."""
    import time

    from orchestrator.launch.local_cluster import preempt_node

    def drained(kill_at: float) -> None:
        console.print(f"draining {name} for preemption; killing it in "
                      f"{kill_at - time.time():.0f} s")

    count = preempt_node(state, name, deadline, on_drained=drained)
    console.print(f"preempted {name}: {count} processes killed" if count else
                  f"preempted {name}: it had shut down already (drained and idle)")


team_app = typer.Typer(help="The team setup on 127.0.0.1, to rehearse it: an S3 API server, "
                       "PostgreSQL, and an MLflow server on both (artifacts in the bucket).",
                       no_args_is_help=True)
app.add_typer(team_app, name="team")
TeamState = Annotated[Path, typer.Option(
    "--state", help="The file that records the running stack (each server's pid, port, log).")]
_TEAM_STATE = Path(".orchestrator/team-stack.json")


@team_app.command("up")
@_exits
@_private
def team_up(
    bucket: Annotated[str, typer.Option(
        help="Bucket for checkpoints (checkpoints/) and MLflow's artifacts (mlflow/).")]
    = "orchestrator",
    detach: Annotated[bool, typer.Option(
        "--detach", help="Return once it is up; stop it with `team down`. Default: run until "
        "Ctrl-C.")] = False,
    mlflow_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="The MLflow server's port. Default: a free one.")] = None,
    state: TeamState = _TEAM_STATE,
) -> None:
    """Start the S3 server (with BUCKET), PostgreSQL and MLflow on 127.0.0.1; print what a job
    needs to use them."""
    from orchestrator.team.stack import check_bucket, exports, serve, start_stack, write_state

    check_bucket(bucket)
    if state.exists():
        raise InputError(f"--state {state}: a team stack is recorded there already; "
                         "`orchestrator team down` first, or pass another --state")
    log_dir = state.with_name("team-logs")

    def ready(stack: Any, how_to_stop: str) -> None:
        lines = [f"team stack up on 127.0.0.1 (state: {state}, logs: {log_dir}):"]
        lines += [f"  {s.name:9} {s.url}  pid {s.pid}" for s in stack.servers.values()]
        lines += ["for a job, in the shell that submits it:", *(f"  {x}" for x in exports(stack))]
        console.print("\n".join([*lines, how_to_stop]), highlight=False, soft_wrap=True)

    if detach:
        stack = start_stack(bucket, log_dir, mlflow_port=mlflow_port)
        write_state(state, stack)
        ready(stack, "stop it with: orchestrator team down")
        return
    serve(bucket, state_path=state, log_dir=log_dir, mlflow_port=mlflow_port,
          on_ready=lambda stack: ready(stack, "Ctrl-C stops it."))


@team_app.command("status")
@_exits
def team_status(state: TeamState = _TEAM_STATE) -> None:
    """Each recorded server: URL, pid, and whether it is still running."""
    from rich.table import Table

    from orchestrator.team.stack import alive, read_state

    stack = read_state(state)
    up = alive(stack)
    table = Table(title=f"team stack (bucket {stack.bucket})")
    for column in ("server", "url", "pid", "alive"):
        table.add_column(column)
    for name, server in stack.servers.items():
        table.add_row(name, server.url, str(server.pid),
                      Text("yes", "green") if up[name] else Text("no", "red"))
    console.print(table, soft_wrap=True)


@team_app.command("down")
@_exits
def team_down(state: TeamState = _TEAM_STATE) -> None:
    """Stop every recorded server by its pid (never by name) and remove the state file."""
    from orchestrator.team.stack import read_state, stop_stack

    stopped = stop_stack(read_state(state))
    state.unlink(missing_ok=True)
    console.print(f"team stack stopped ({', '.join(stopped)})" if stopped
                  else "it had stopped already; cleaned up", highlight=False)


def main() -> None:
    """Console-script entry point. SIGTERM unwinds like Ctrl-C, so the driver marks its MLflow
    run KILLED instead of dying with the run left RUNNING."""
    signal.signal(signal.SIGTERM, raise_interrupt)
    sys.exit(app())
