"""``orchestrator submit``: validate, pre-flight the data, plan, track, launch, report.

The driver owns the MLflow run: it creates it before Ray starts and sets its final status in
every outcome (FINISHED, FAILED, or KILLED on Ctrl-C), so no run is ever left RUNNING.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

import orchestrator
from orchestrator.errors import InputError, JobFailedError
from orchestrator.job import WorkerJob
from orchestrator.launch.prepared import Prepared
from orchestrator.launch.signals import INTERRUPTS, RunInterrupted, restored_handlers, shielded
from orchestrator.models import PROJECT_ROOT
from orchestrator.plan import ScalingPlan
from orchestrator.secrets import redact_urls
from orchestrator.tracking.run import RunTracker, flatten, git_commit

__all__ = ["SubmitOutcome", "check_data", "submit", "FINAL_METRICS"]

FINAL_METRICS = ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50")


@dataclass(kw_only=True)
class SubmitOutcome:
    plan: ScalingPlan
    run_id: str | None = None
    status: str = "DRY_RUN"
    metrics: dict[str, float] = field(default_factory=dict)


def check_data(prepared: Prepared, *, skip: bool, console: Console) -> Prepared:
    """Pre-flight every dataset file before anything starts; blocking defects exit 2.

    Warnings (images without annotations, crowd regions) are shown and training goes on.
    A dataset unchanged since its last check reuses that check's report.
    """
    from dataclasses import replace

    from orchestrator.data.check import preflight, raise_for_errors

    if skip:
        console.print("data check skipped (--skip-data-check)", style="yellow")
        return replace(prepared, data_check="skipped")
    reports = preflight(prepared.data, cache=prepared.checks,
                        note=lambda text: console.print(text, style="dim", highlight=False))
    for report in reports:
        if report.warnings and not report.has_errors:
            console.print(report.format(), highlight=False)
    raise_for_errors(reports)
    return replace(prepared, data_check="passed" if reports else "no data files")


def plan_table(prepared: Prepared) -> Table:
    table = Table(title=f"scaling plan: {prepared.spec.name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in prepared.plan.describe():
        table.add_row(key, value)
    table.add_row("model", f"{prepared.spec.model.arch} ({prepared.config_file.name})")
    for label, ds in (("train data", prepared.data.train), ("test data", prepared.data.test)):
        if ds is not None:
            found = "" if ds.exists else f" (not found: {ds.json_file})"
            table.add_row(label, Text.assemble(ds.name, (found, "yellow")))
    table.add_row("classes", str(len(prepared.data.class_names) or "-"))
    return table


def _start_run(prepared: Prepared, parent_run_id: str | None = None) -> RunTracker:
    spec = prepared.spec
    assert spec.tracking.tracking_uri is not None
    tags = {
        "model": spec.model.arch,
        "dataset": prepared.data.train.name,
        "workers": str(prepared.plan.workers),
        "device": prepared.plan.device,
        "git_commit": git_commit(PROJECT_ROOT),
        "orchestrator_version": orchestrator.__version__,
        "job": spec.name,
        "data_check": prepared.data_check,
        **spec.tags,
    }
    if parent_run_id:  # MLflow's own tag for nesting: the UI shows children under the parent
        tags["mlflow.parentRunId"] = parent_run_id
    tracker = RunTracker.create(tracking_uri=spec.tracking.tracking_uri,
                                experiment=spec.tracking.experiment,
                                run_name=spec.tracking.run_name or spec.name, tags=tags)
    try:
        tracker.log_params({**prepared.plan.as_params(),
                            **flatten(spec.redacted(), "spec.")})
        tracker.log_text(spec.resolved_yaml(), "job.yaml")
    except BaseException as exc:
        tracker.finish("KILLED" if isinstance(exc, INTERRUPTS) else "FAILED")
        raise
    return tracker


def _worker_job(prepared: Prepared, tracker: RunTracker) -> WorkerJob:
    spec = prepared.spec
    output = Path(spec.run.output_dir) / f"{spec.name}-{tracker.run_id[:8]}"
    return WorkerJob(spec=spec, plan=prepared.plan, data=prepared.data,
                     config_file=str(prepared.config_file), output_dir=str(output),
                     run_id=tracker.run_id, tracking_uri=tracker.tracking_uri)


def _resume_run(prepared: Prepared, run_id: str, console: Console) -> RunTracker:
    """Reopen a stopped run (or one whose driver died): same MLflow run, same Ray run name,
    so Ray Train continues from the run's latest checkpoint in ``run.storage_path``."""
    spec = prepared.spec
    assert spec.tracking.tracking_uri is not None
    tracker = RunTracker.reopen(tracking_uri=spec.tracking.tracking_uri, run_id=run_id,
                                job=spec.name)
    if tracker.stale:
        console.print(f"run {run_id} was left RUNNING ({tracker.stale}): resuming it",
                      style="yellow", highlight=False)
    tracker.set_tags({"resumed": "true"})
    return tracker


def submit(prepared: Prepared, *, console: Console, verbose: bool = False,
           resume: str | None = None, parent_run_id: str | None = None,
           label: str = "") -> SubmitOutcome:
    """Create (or, with ``resume``, reopen) the MLflow run, train on Ray, and close the run in
    every outcome. The run is opened on a thread while Ray starts: a fresh sqlite store spends
    seconds creating its schema, and that now overlaps Ray's start instead of preceding it."""
    from orchestrator.launch.embedded import fit, ray_session
    from orchestrator.launch.preflight import run_checks

    if not prepared.preflight:  # before the MLflow run exists and before Ray starts
        run_checks(prepared, "plan", console=console)
        run_checks(prepared, "launch", console=console)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-run") as pool:
        if resume:  # an existing store, and a wrong run id must stop us before Ray starts
            opening: Future[RunTracker] = Future()
            opening.set_result(_resume_run(prepared, resume, console))
        else:
            opening = pool.submit(_start_run, prepared, parent_run_id)
        try:
            with restored_handlers(), ray_session(prepared.spec, verbose=verbose):
                tracker = opening.result()
                job = _worker_job(prepared, tracker)
                console.print(f"MLflow run {tracker.run_id} in "
                              f"{redact_urls(tracker.tracking_uri)}")
                tracker.set_tags({"ray_run_name": job.output_dir.rsplit("/", 1)[-1]})
                fit(job, console=console, label=label)
        except INTERRUPTS:  # Ctrl-C or SIGTERM, whichever handler caught it (launch.signals)
            with shielded():
                opening_error = _finish_opened(opening, "KILLED")
            if opening_error is not None:  # no run was opened: nothing to resume
                raise KeyboardInterrupt from None
            raise RunInterrupted(opening.result().run_id) from None
        except BaseException as exc:
            opening_error = _finish_opened(opening, "FAILED")
            if opening_error is not None and opening_error is not exc:
                raise opening_error from None  # the MLflow error, not Ray's that followed it
            if isinstance(exc, InputError | JobFailedError):
                raise
            raise JobFailedError(f"job failed: {exc}") from exc
    tracker.finish("FINISHED")
    return SubmitOutcome(plan=prepared.plan, run_id=tracker.run_id, status="FINISHED",
                         metrics=tracker.metrics())


def _finish_opened(opening: Future[RunTracker], status: str) -> BaseException | None:
    """Close the run if it was opened; else return why it could not be."""
    try:
        tracker = opening.result()
    except BaseException as exc:  # noqa: BLE001 - returned to the caller, which raises it
        return exc
    tracker.finish(status)
    return None
