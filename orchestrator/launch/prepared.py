"""A job spec checked against the disk, short of starting anything: ``prepare`` and ``Prepared``.

Submit, the sweep, pre-flight and ``validate`` all start from here; it imports none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.data.catalog import ResolvedData, resolve_data
from orchestrator.data.check_cache import cache_folder
from orchestrator.errors import InputError
from orchestrator.models import SUPPORTED_ARCHS, resolve_model_config
from orchestrator.models.preflight import check_model_config
from orchestrator.plan import ScalingPlan, make_plan
from orchestrator.secrets import make_private, worker_env
from orchestrator.spec import JobSpec
from orchestrator.tracking.run import default_tracking_uri

__all__ = ["Prepared", "prepare"]


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A spec checked against the disk: paths made absolute, data found, plan computed."""

    spec: JobSpec
    data: ResolvedData
    plan: ScalingPlan
    config_file: Path
    data_check: str = "not run"
    checks: Path | None = None  # where data check results are kept (check_cache)
    preflight: bool = False  # the launch-stage checks passed (a sweep checks every child first)



def _absolute(spec: JobSpec, workdir: Path) -> JobSpec:
    """Relative run paths are relative to where submit runs; workers run elsewhere."""
    run = spec.run
    storage = run.storage_path
    if "://" not in storage:
        storage = str((workdir / storage).resolve())
    output = str((workdir / run.output_dir).resolve())
    tracking = (spec.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or default_tracking_uri(workdir))
    weights = spec.model.weights
    # Checked here, read by workers elsewhere. A cluster's driver keeps the path as given:
    # there it is relative to the job's working dir, on every node.
    if weights and "://" not in weights and not os.environ.get("RAY_ADDRESS"):
        weights = str((workdir / Path(weights).expanduser()).resolve())
    return spec.model_copy(update={
        "model": spec.model.model_copy(update={"weights": weights}),
        "run": run.model_copy(update={"storage_path": storage, "output_dir": output}),
        "tracking": spec.tracking.model_copy(update={"tracking_uri": tracking}),
    })


def prepare(spec: JobSpec, *, workdir: Path | None = None, strict: bool = True,
            generate: bool = True) -> Prepared:
    """Everything short of starting Ray; raises InputError naming what is wrong.
    ``generate=False`` (``validate``) writes nothing: no synthetic data, no folders."""
    workdir = (workdir or Path.cwd()).resolve()
    if spec.model.arch not in SUPPORTED_ARCHS:
        raise InputError(f"model.arch: '{spec.model.arch}' is not available yet "
                         f"(available: {', '.join(sorted(SUPPORTED_ARCHS))})")
    config_file = resolve_model_config(spec.model.config, workdir)
    check_model_config(config_file, spec.model.arch, list(spec.model.opts))
    worker_env(spec.run.env, spec.run.env_from)  # a missing env_from variable is bad input
    spec = _absolute(spec, workdir)
    checks = None  # validate (generate=False) writes nothing, so it keeps no check results
    if generate:
        _private_dir(workdir / ".orchestrator")
        checks = cache_folder(workdir)
    data = resolve_data(spec, cache_root=workdir / ".orchestrator" / "datasets", base=workdir,
                        strict=strict, generate=generate, checks=checks)
    return Prepared(spec=spec, data=data, plan=make_plan(spec, data.usable_images),
                    config_file=config_file, checks=checks)


def _private_dir(path: Path) -> None:
    """``.orchestrator/`` holds datasets, logs and checkpoints: the user's only."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_private(path)
