"""Comparing runs: differing params, final and best metric values, and the curves PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from orchestrator.errors import InputError
from orchestrator.tracking.compare import compare_runs, direction
from orchestrator.tracking.compare_plot import plot_curves
from orchestrator.tracking.compare_table import comparison_tables
from tests.tracking.conftest import Populated, log_run


def test_direction_of_best() -> None:
    assert direction("segm/AP") == direction("bbox/AP50") == "max"
    assert direction("total_loss") == direction("loss_mask") == "min"
    assert direction("lr") is None and direction("mask_rcnn/accuracy") is None


def test_compare_by_name_and_id(populated: Populated) -> None:
    comparison = compare_runs(["w2", populated.w4, "mmdet_mask_rcnn_r50_fpn_1x"],
                              tracking_uri=populated.uri)
    assert [run.name for run in comparison.runs] == ["w2", "w4", "mmdet_mask_rcnn_r50_fpn_1x"]
    params = dict(comparison.params)
    assert params["workers"] == ("2", "4", "-")
    assert params["source_format"] == ("-", "-", "mmdetection")
    assert "max_iter" in params  # missing from the imported run
    rows = {row.name: row for row in comparison.metrics}
    assert rows["segm/AP"].final == (11.0, 11.0, 28.3)
    assert rows["segm/AP"].best == (12.0, 14.0, 28.3)
    assert rows["total_loss"].best == (pytest.approx(0.4), pytest.approx(0.6), 0.678)
    assert rows["mmdet/acc"].best == (None, None, None)
    assert [row.name for row in comparison.metrics][:2] == ["bbox/AP", "bbox/AP50"]  # AP first


def test_params_that_agree_are_left_out(populated: Populated) -> None:
    comparison = compare_runs(["w2", "w4"], tracking_uri=populated.uri)
    assert [name for name, _ in comparison.params] == ["base_lr", "workers"]
    titles = [table.title for table in comparison_tables(comparison)]
    assert titles == ["runs", "params that differ (2)", "metrics: final (best)"]


def test_unknown_and_ambiguous_names(store: str) -> None:
    with pytest.raises(InputError, match="no run with id or name 'ghost'"):
        compare_runs(["ghost"], tracking_uri=store)
    first = log_run(store, "twin", workers=1)
    second = log_run(store, "twin", workers=1, experiment="other")
    with pytest.raises(InputError, match="ambiguous") as caught:
        compare_runs(["twin"], tracking_uri=store)
    assert first in str(caught.value) and second in str(caught.value)
    assert compare_runs([first], tracking_uri=store).runs[0].run_id == first


def test_plot_writes_a_png(populated: Populated, tmp_path: Path) -> None:
    comparison = compare_runs([populated.w2, populated.w4, populated.d2, populated.mmdet],
                              tracking_uri=populated.uri)
    # Imported logs name their reference batch (runs logged without one are left out).
    assert comparison.reference_batches == {16}
    out = plot_curves(comparison, tmp_path / "plots" / "curves.png")
    assert out.stat().st_size > 0
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.mode in ("RGBA", "RGB")
        assert image.size[0] > image.size[1] > 100
    with pytest.raises(InputError, match=r"\*\.png"):
        plot_curves(comparison, tmp_path / "curves.pdf")
