"""Render a ``Comparison`` as rich tables for the terminal: runs, differing params, metrics."""

from __future__ import annotations

from rich.table import Table

from orchestrator.tracking.compare import Comparison

__all__ = ["comparison_tables", "format_value"]


def format_value(value: float | None) -> str:
    """Short, aligned numbers: AP in percent reads as 35.24, losses and lr keep precision."""
    if value is None:
        return "-"
    if value == 0 or 0.01 <= abs(value) < 1e5:
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return f"{value:.3g}"


def comparison_tables(comparison: Comparison) -> list[Table]:
    """The runs, the params that differ, then each metric's final (and best) per run."""
    names = [run.name for run in comparison.runs]
    runs = Table(title="runs")
    for column in ("name", "run id", "experiment", "status"):
        runs.add_column(column)
    for run in comparison.runs:
        runs.add_row(run.name, run.run_id, run.experiment, run.status)
    params = Table(title=f"params that differ ({len(comparison.params)})")
    params.add_column("param", style="bold")
    for name in names:
        params.add_column(name, overflow="fold")
    for key, values in comparison.params:
        params.add_row(key, *values)
    return [runs, params, _metrics_table(comparison, names)]


def _metrics_table(comparison: Comparison, names: list[str]) -> Table:
    table = Table(title="metrics: final (best)", caption="best = max for AP, min for losses")
    table.add_column("metric", style="bold")
    for name in names:
        table.add_column(name, justify="right")
    for row in comparison.metrics:
        cells = []
        for final, best in zip(row.final, row.best, strict=True):
            text = format_value(final)
            if best is not None and best != final:
                text += f" ({format_value(best)})"
            cells.append(text)
        table.add_row(row.name, *cells)
    return table
