"""Sweeps: one spec, several trainings, tracked as child runs of one parent MLflow run.

On the embedded Ray the children run one after another (each uses all the workers the spec
asks for); on a cluster they are all submitted at once and Ray runs as many as its resources
allow. The parent records the sweep and ends FINISHED only if every child did.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.launch.preflight import run_checks
from orchestrator.launch.prepared import prepare
from orchestrator.launch.signals import INTERRUPTS, RunInterrupted, shielded
from orchestrator.launch.submit import SubmitOutcome, check_data, plan_table, submit
from orchestrator.secrets import redact_assignment
from orchestrator.spec import JobSpec, expand_sweep
from orchestrator.tracking.run import RunTracker

__all__ = ["SweepOutcome", "child_run_name", "run_sweep", "plan_sweep"]


@dataclass(kw_only=True)
class SweepOutcome:
    parent_run_id: str
    children: list[tuple[dict[str, Any], SubmitOutcome]]


def child_run_name(name: str, assignment: dict[str, Any]) -> str:
    """``demo[resources.workers=2,solver.reference_lr=0.01]``: readable in the MLflow UI."""
    shown = redact_assignment(assignment)
    return f"{name}[{','.join(f'{k}={v}' for k, v in shown.items())}]"


def _child(spec: JobSpec, assignment: dict[str, Any]) -> JobSpec:
    tracking = spec.tracking.model_copy(
        update={"run_name": child_run_name(spec.tracking.run_name or spec.name, assignment)})
    return spec.model_copy(update={"tracking": tracking})


def plan_sweep(spec: JobSpec, *, console: Console, skip_data_check: bool = False,
               workdir: Path | None = None) -> list[Any]:
    """Check and print every child's plan (``--dry-run``); returns the prepared children."""
    prepared = []
    for assignment, child in expand_sweep(spec):
        ready = check_data(prepare(_child(child, assignment), workdir=workdir),
                           skip=skip_data_check, console=console)
        run_checks(ready, "plan", console=console)
        console.print(plan_table(ready))
        prepared.append((assignment, ready))
    return prepared


def _open_parent(spec: JobSpec, tracking_uri: str) -> RunTracker:
    parent = RunTracker.create(tracking_uri=tracking_uri, experiment=spec.tracking.experiment,
                               run_name=spec.tracking.run_name or spec.name,
                               tags={"sweep": "true", "job": spec.name, **spec.tags})
    parent.log_params({f"sweep.{k}": str(v) for k, v in spec.redacted()["sweep"].items()})
    parent.log_text(spec.resolved_yaml(), "job.yaml")
    return parent


Children = list[tuple[dict[str, Any], Any]]
Done = list[tuple[dict[str, Any], SubmitOutcome]]


def _in_turn(children: Children, parent: RunTracker, console: Console, verbose: bool) -> Done:
    done: Done = []
    for assignment, prepared in children:
        console.print(f"sweep {len(done) + 1}/{len(children)}: "
                      f"{redact_assignment(assignment)}")
        done.append((assignment, submit(prepared, console=console, verbose=verbose,
                                        parent_run_id=parent.run_id)))
    return done


def _at_once(children: Children, parent: RunTracker, console: Console, verbose: bool) -> Done:
    """All children at once on the cluster this driver runs on: Ray holds back the worker
    groups it has no resources for yet, so they start as others finish."""
    from orchestrator.launch.embedded import ray_session

    with ray_session(children[0][1].spec, verbose=verbose), \
            ThreadPoolExecutor(max_workers=len(children), thread_name_prefix="sweep") as pool:
        futures = [pool.submit(submit, prepared, console=console, verbose=verbose,
                               parent_run_id=parent.run_id,
                               label=prepared.spec.tracking.run_name)
                   for _, prepared in children]
        return [(assignment, future.result())
                for (assignment, _), future in zip(children, futures, strict=True)]


def on_cluster() -> bool:
    """A Ray job's driver (``submit --address``) runs with RAY_ADDRESS set by Ray."""
    return bool(os.environ.get("RAY_ADDRESS"))


def run_sweep(spec: JobSpec, *, console: Console, verbose: bool = False,
              skip_data_check: bool = False, workdir: Path | None = None) -> SweepOutcome:
    """Train every combination under one parent run: in turn on the embedded Ray, all at
    once (as resources allow) on a cluster."""
    children = plan_sweep(spec, console=console, skip_data_check=skip_data_check,
                          workdir=workdir)
    for i, (_, prepared) in enumerate(children):  # every child, before the parent run exists
        run_checks(prepared, "launch", console=console)
        children[i] = (children[i][0], replace(prepared, preflight=True))
    tracking_uri = children[0][1].spec.tracking.tracking_uri
    parent = _open_parent(spec, tracking_uri)
    run = _at_once if on_cluster() and len(children) > 1 else _in_turn
    try:
        done = run(children, parent, console, verbose)
    except (RunInterrupted, *INTERRUPTS) as exc:
        with shielded():
            parent.finish("KILLED")
        child = f" and child run {exc.run_id}" if isinstance(exc, RunInterrupted) else ""
        raise RunInterrupted(parent.run_id, f"interrupted: sweep run {parent.run_id}{child} "
                             "marked KILLED") from None
    except BaseException:
        parent.finish("FAILED")
        raise
    parent.finish("FINISHED")
    return SweepOutcome(parent_run_id=parent.run_id, children=done)
