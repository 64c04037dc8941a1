"""Draw a ``Comparison`` as a PNG: loss and AP curves of all runs on a shared x axis, the MLflow
step: iterations at the reference batch, the same amount of training for any worker count.

Uses matplotlib's object API with the Agg canvas, chosen here rather than at import, so neither
importing the package nor plotting touches pyplot's global backend state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import InputError
from orchestrator.tracking.steps import axis_label

if TYPE_CHECKING:
    from orchestrator.tracking.compare import Comparison

__all__ = ["plot_curves"]

_PANELS = (("total_loss", "total loss"), ("bbox/AP", "box AP (%)"), ("segm/AP", "mask AP (%)"))


def plot_curves(comparison: Comparison, path: Path) -> Path:
    """Write three panels (total loss, box AP, mask AP), one line per run, to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if path.suffix.lower() != ".png":
        raise InputError(f"--plot {path}: the plot is a PNG; name the file *.png")
    figure = Figure(figsize=(15, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(_PANELS), sharex=True)
    for ax, (metric, label) in zip(axes, _PANELS, strict=True):
        _panel(ax, comparison, metric, label)
    labels = _labels(comparison)
    handles = [Line2D([], [], color=f"C{i % 10}", label=text) for i, text in enumerate(labels)]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _labels(comparison: Comparison) -> list[str]:
    """Run names, with the short id added where two runs share a name."""
    names = [run.name for run in comparison.runs]
    return [name if names.count(name) == 1 else f"{name} ({run.run_id[:8]})"
            for name, run in zip(names, comparison.runs, strict=True)]


def _panel(ax: Any, comparison: Comparison, metric: str, label: str) -> None:
    """One metric, one line per run; evaluations are few, so AP points get markers."""
    drawn = False
    for index, run in enumerate(comparison.runs):
        curve = comparison.curves.get(run.run_id, {}).get(metric)
        if not curve:
            continue
        steps, values = zip(*curve, strict=True)
        marker = "o" if metric != "total_loss" else "."
        ax.plot(steps, values, marker=marker, color=f"C{index % 10}")
        drawn = True
    ax.set_title(label)
    ax.set_xlabel(axis_label(comparison.reference_batches))
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, f"no run has {metric}", ha="center", va="center",
                transform=ax.transAxes, color="gray")
