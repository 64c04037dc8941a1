"""``orchestrator runs compare``: what differs between runs and how their metrics ended.

Runs are named by id or by run name (looked up across experiments). The result is data only:
the CLI renders it (``tracking.compare_table``) and ``tracking.compare_plot.plot_curves`` draws
the curves; neither of those is imported here, so the modules form no cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import InputError

__all__ = ["RunRef", "MetricRow", "Comparison", "compare_runs", "resolve_run", "direction"]

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
PLOTTED = ("total_loss", "bbox/AP", "segm/AP")
Curve = list[tuple[int, float]]


@dataclass(frozen=True)
class RunRef:
    """One resolved run: what a person recognises it by."""

    run_id: str
    name: str
    experiment: str
    status: str


@dataclass(frozen=True)
class MetricRow:
    """One metric across runs; ``None`` where a run lacks it (or has no "best")."""

    name: str
    final: tuple[float | None, ...]
    best: tuple[float | None, ...]


@dataclass
class Comparison:
    runs: list[RunRef]
    params: list[tuple[str, tuple[str, ...]]]  # only params whose values differ
    metrics: list[MetricRow]
    curves: dict[str, dict[str, Curve]] = field(default_factory=dict)  # run id -> metric -> pts
    # Steps are iterations at each run's ``reference_batch`` param (tracking.steps).
    reference_batches: set[int] = field(default_factory=set)


def direction(metric: str) -> str | None:
    """``max`` for AP, ``min`` for losses, ``None`` where "best" means nothing."""
    head, _, tail = metric.rpartition("/")
    if head and tail.startswith("AP"):
        return "max"
    if metric.startswith("loss") or metric == "total_loss":
        return "min"
    return None


def compare_runs(refs: list[str], *, tracking_uri: str) -> Comparison:
    """Resolve ``refs`` (run ids or names) and tabulate differing params and metrics."""
    from mlflow.tracking import MlflowClient

    if not refs:
        raise InputError("name at least one run (a run id or a run name) to compare")
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = [resolve_run(client, ref) for ref in refs]
    refs_out = [_ref(client, run) for run in runs]
    curves = {run.info.run_id: _curves(client, run) for run in runs}
    return Comparison(runs=refs_out, params=_differing_params(runs),
                      metrics=_metric_rows(runs, curves), curves=curves,
                      reference_batches=_reference_batches(runs))


def _reference_batches(runs: list[Any]) -> set[int]:
    """The batches whose iterations the runs' steps count (runs without the param are left
    out: they were logged before steps had a reference batch)."""
    found = (run.data.params.get("reference_batch", "") for run in runs)
    return {int(value) for value in found if value.isdigit()}


def resolve_run(client: Any, ref: str) -> Any:
    """A run id if it is one in this store, else a unique run name across experiments."""
    from mlflow.exceptions import MlflowException

    if _RUN_ID.match(ref):
        try:
            return client.get_run(ref)
        except MlflowException:
            pass
    experiments = [exp.experiment_id for exp in client.search_experiments()]
    quote = '"' if "'" in ref else "'"
    found = client.search_runs(experiments,
                               filter_string=f"attributes.run_name = {quote}{ref}{quote}",
                               max_results=50) if experiments else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(f"no run with id or name '{ref}' in {client.tracking_uri} "
                         "(check --tracking-uri; `orchestrator ui` lists the runs)")
    listed = "; ".join(f"{run.info.run_id} (experiment {run.info.experiment_id}, "
                       f"{run.info.status})" for run in found)
    raise InputError(f"run name '{ref}' is ambiguous: {len(found)} runs carry it: {listed}. "
                     "Pass a run id instead.")


def _ref(client: Any, run: Any) -> RunRef:
    experiment = client.get_experiment(run.info.experiment_id)
    return RunRef(run_id=run.info.run_id, name=run.info.run_name or run.info.run_id[:8],
                  experiment=experiment.name, status=run.info.status)


def _differing_params(runs: list[Any]) -> list[tuple[str, tuple[str, ...]]]:
    names = sorted({key for run in runs for key in run.data.params})
    rows = []
    for name in names:
        values = tuple(run.data.params.get(name, "-") for run in runs)
        if len(set(values)) > 1:
            rows.append((name, values))
    return rows


def _curves(client: Any, run: Any) -> dict[str, Curve]:
    """Full histories of the metrics that have a "best" (and of the plotted ones)."""
    wanted = [key for key in run.data.metrics if direction(key) or key in PLOTTED]
    curves = {}
    for key in wanted:
        history = client.get_metric_history(run.info.run_id, key)
        curves[key] = sorted((m.step, m.value) for m in history)
    return curves


def _metric_rows(runs: list[Any], curves: dict[str, dict[str, Curve]]) -> list[MetricRow]:
    names = sorted({key for run in runs for key in run.data.metrics}, key=_metric_order)
    rows = []
    for name in names:
        sense = direction(name)
        finals = tuple(run.data.metrics.get(name) for run in runs)
        bests = tuple(_best(curves[run.info.run_id].get(name), sense) for run in runs)
        rows.append(MetricRow(name=name, final=finals, best=bests))
    return rows


def _best(curve: Curve | None, sense: str | None) -> float | None:
    if not curve or sense is None:
        return None
    values = [value for _, value in curve]
    return max(values) if sense == "max" else min(values)


def _metric_order(name: str) -> tuple[int, str]:
    """AP first, then losses, then the rest: the rows a person looks for come first."""
    rank = {"max": 0, "min": 1}.get(direction(name) or "", 2)
    return rank, name
