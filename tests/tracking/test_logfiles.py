"""Reading reference logs into detectron2 names, percent AP and global iterations (no MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import InputError
from orchestrator.tracking.logfiles import DETECTRON2, MMDET, parse_log
from tests.tracking.conftest import D2_LOG, MMDET_LOG, need_reference_logs

EPOCH = 7330  # MMDetection's COCO epoch at batch 16 (shared/data/README.md)


def write_lines(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_detectron2_metrics_keep_names_units_and_steps() -> None:
    need_reference_logs()
    parsed = parse_log(D2_LOG)
    assert parsed.source_format == DETECTRON2
    assert parsed.metrics["segm/AP"][-1] == (89999, pytest.approx(35.24, abs=0.005))
    assert parsed.metrics["bbox/AP"][-1] == (89999, pytest.approx(38.65, abs=0.005))
    assert parsed.metrics["segm/AP"][0][0] == 44999
    assert parsed.metrics["total_loss"][0] == (19, pytest.approx(2.24487855611369))
    assert "iteration" not in parsed.metrics


def test_mmdet_log_becomes_detectron2_names_in_percent_at_global_steps() -> None:
    need_reference_logs()
    parsed = parse_log(MMDET_LOG)
    assert parsed.source_format == MMDET
    assert parsed.params == {"iters_per_epoch": str(EPOCH), "iters_per_epoch_source": "val record"}
    assert parsed.metrics["segm/AP"] == [(6 * EPOCH, 28.3)]  # end of epoch 6; 0.283 -> 28.3
    assert parsed.metrics["bbox/AP50"] == [(6 * EPOCH, 49.4)]
    assert parsed.metrics["segm/APl"] == [(6 * EPOCH, 37.4)]
    loss = dict(parsed.metrics["total_loss"])
    assert loss[50] == 1.95971  # epoch 1, iter 50
    assert loss[5 * EPOCH + 7300] == 0.88044  # epoch 6, iter 7300
    assert loss[11 * EPOCH + 7300] == 0.73906  # the last record
    assert dict(parsed.metrics["loss_box_reg"])[50] == 0.15389  # MMDetection's loss_bbox
    assert dict(parsed.metrics["loss_rpn_loc"])[50] == 0.09809  # its loss_rpn_bbox
    assert dict(parsed.metrics["mmdet/acc"])[50] == 93.2146
    assert dict(parsed.metrics["mmdet/memory"])[50] == 4207
    for absent in ("loss", "loss_bbox", "acc", "memory", "mmdet/bbox_mAP_copypaste",
                   "mmdet/epoch"):
        assert absent not in parsed.metrics
    assert parsed.tags["env.PyTorch"] == "1.3.1"
    assert parsed.tags["env.GPU 0_1_2_3_4_5_6_7"] == "Tesla V100-SXM2-32GB"  # no commas in keys


def test_mmdet_epoch_length_override_and_inference(tmp_path: Path) -> None:
    records = [{"mode": "train", "epoch": e, "iter": i, "loss": 1.0}
               for e in (1, 2) for i in (50, 100, 130)]
    log = write_lines(tmp_path / "log.json", records)
    inferred = parse_log(log)  # no val record: largest iter rounded up to the interval (10)
    assert inferred.params["iters_per_epoch"] == "130"
    assert inferred.metrics["total_loss"][3][0] == 130 + 50
    given = parse_log(log, iters_per_epoch=200)
    assert given.params["iters_per_epoch_source"] == "user"
    assert given.metrics["total_loss"][3][0] == 200 + 50


@pytest.mark.parametrize(("lines", "message"), [
    (["{\"iteration\": 1}", "not json"], ":2: not a JSON line"),
    (["[1, 2]"], ":1: expected a JSON object"),
    (["{\"loss\": 1.0}"], ":1: unknown log format"),
    (["{\"iteration\": \"x\"}"], ":1: 'iteration' must be an integer"),
    (["{\"mode\": \"train\", \"epoch\": 1, \"iter\": 0}"], ":1: 'iter' must be a positive"),
    (["", "  "], "the log is empty"),
])
def test_bad_logs_name_the_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    log = tmp_path / "bad.json"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="bad.json") as caught:
        parse_log(log)
    assert message in str(caught.value)
