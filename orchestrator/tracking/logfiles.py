"""Read training logs of other tools into detectron2's metric names, units and steps.

Two formats, told apart by content: detectron2's ``metrics.json`` (already in our names, AP in
percent, ``iteration`` as step) and MMDetection's ``log.json`` (environment record first, per-epoch
``iter``, AP as fractions, its own loss names). Everything here is pure: no MLflow.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError

__all__ = [
    "DETECTRON2",
    "MMDET",
    "ParsedLog",
    "parse_log",
    "read_records",
    "detect_format",
]

DETECTRON2 = "detectron2"
MMDET = "mmdetection"

# MMDetection train names -> detectron2 names, where they mean the same thing.
_MMDET_TRAIN = {
    "loss": "total_loss",
    "loss_cls": "loss_cls",
    "loss_bbox": "loss_box_reg",
    "loss_mask": "loss_mask",
    "loss_rpn_cls": "loss_rpn_cls",
    "loss_rpn_bbox": "loss_rpn_loc",
    "lr": "lr",
    "time": "time",
    "data_time": "data_time",
}
_MMDET_AP = {"mAP": "AP", "mAP_50": "AP50", "mAP_75": "AP75",
             "mAP_s": "APs", "mAP_m": "APm", "mAP_l": "APl"}
_MMDET_BOOKKEEPING = {"mode", "epoch", "iter"}
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")


@dataclass
class ParsedLog:
    """A log in our terms: ``metrics[name] = [(step, value), ...]`` plus run metadata."""

    source_format: str
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    records: int = 0
    counts_done: bool = False  # steps count iterations done (MMDetection), not 0-based ones

    def add(self, name: str, step: int, value: Any) -> None:
        """Keep finite numbers only (strings such as ``bbox_mAP_copypaste`` are not metrics)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        if math.isfinite(value):
            self.metrics.setdefault(_safe_key(name), []).append((step, float(value)))


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """JSON lines -> (line number, object); an InputError names the file and line otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the log: {exc}") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not a JSON line ({exc.msg}); expected a "
                             "detectron2 metrics.json or an MMDetection log.json") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number}: expected a JSON object per line, "
                             f"got {type(record).__name__}")
        records.append((number, record))
    if not records:
        raise InputError(f"{path}: the log is empty")
    return records


def detect_format(path: Path, records: list[tuple[int, dict[str, Any]]]) -> str:
    """MMDetection records carry ``mode`` + ``epoch``; detectron2's carry ``iteration``."""
    if any("mode" in rec and "epoch" in rec for _, rec in records):
        return MMDET
    for number, rec in records:
        if "iteration" not in rec:
            raise InputError(
                f"{path}:{number}: unknown log format: a record with neither 'iteration' "
                "(detectron2 metrics.json) nor 'mode'/'epoch' (MMDetection log.json)")
    return DETECTRON2


def parse_log(path: Path, *, iters_per_epoch: int | None = None) -> ParsedLog:
    """Read ``path`` (either format) into detectron2 names, percent AP and global iterations."""
    records = read_records(path)
    if detect_format(path, records) == DETECTRON2:
        return _parse_detectron2(path, records)
    return _parse_mmdet(path, records, iters_per_epoch)


def _parse_detectron2(path: Path, records: list[tuple[int, dict[str, Any]]]) -> ParsedLog:
    parsed = ParsedLog(source_format=DETECTRON2, records=len(records))
    for number, rec in records:
        step = rec["iteration"]
        if not isinstance(step, int) or isinstance(step, bool):
            raise InputError(f"{path}:{number}: 'iteration' must be an integer, got {step!r}")
        for name, value in rec.items():
            if name != "iteration":
                parsed.add(name, step, value)
    return parsed


def _parse_mmdet(path: Path, records: list[tuple[int, dict[str, Any]]],
                 iters_per_epoch: int | None) -> ParsedLog:
    parsed = ParsedLog(source_format=MMDET, records=len(records), counts_done=True)
    first_number, first = records[0]
    if "mode" not in first:  # the environment record: who ran it on what
        parsed.tags.update({_safe_key(f"env.{k}"): str(v)[:5000] for k, v in first.items()})
        records = records[1:]
    logged = [(n, rec) for n, rec in records if rec.get("mode") in ("train", "val")]
    for number, rec in logged:
        _check_position(path, number, rec)
    epoch_len, how = _epoch_length(logged, iters_per_epoch)
    if epoch_len <= 0:
        raise InputError(f"{path}: cannot infer iterations per epoch (no train records); "
                         "pass --iters-per-epoch")
    parsed.params.update({"iters_per_epoch": str(epoch_len), "iters_per_epoch_source": how})
    for _, rec in logged:
        step = (rec["epoch"] - 1) * epoch_len + rec["iter"]
        _add_mmdet_record(parsed, step, rec)
    return parsed


def _check_position(path: Path, number: int, rec: dict[str, Any]) -> None:
    for key in ("epoch", "iter"):
        value = rec.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{path}:{number}: '{key}' must be a positive integer, "
                             f"got {value!r}")


def _epoch_length(logged: list[tuple[int, dict[str, Any]]],
                  override: int | None) -> tuple[int, str]:
    """The user's value, else a val record's ``iter`` (logged after the epoch's last iteration),
    else the largest train ``iter`` rounded up to the logging interval (may undercount)."""
    if override is not None:
        if override < 1:
            raise InputError(f"--iters-per-epoch must be positive, got {override}")
        return override, "user"
    val_iters = [rec["iter"] for _, rec in logged if rec["mode"] == "val"]
    if val_iters:
        return max(val_iters), "val record"
    train_iters = [rec["iter"] for _, rec in logged if rec["mode"] == "train"]
    if not train_iters:
        return 0, "none"
    interval = math.gcd(*train_iters)
    return math.ceil(max(train_iters) / interval) * interval, "largest train iter"


def _add_mmdet_record(parsed: ParsedLog, step: int, rec: dict[str, Any]) -> None:
    for key, value in rec.items():
        if key in _MMDET_BOOKKEEPING:
            continue
        if rec["mode"] == "train":
            parsed.add(_MMDET_TRAIN.get(key, f"mmdet/{key}"), step, value)
            continue
        task, _, stat = key.partition("_")
        if task in ("bbox", "segm") and stat in _MMDET_AP:
            if isinstance(value, int | float) and not isinstance(value, bool):
                parsed.add(f"{task}/{_MMDET_AP[stat]}", step, round(value * 100.0, 10))
        elif key != "lr":  # the val record repeats the train lr
            parsed.add(f"mmdet/{key}", step, value)


def _safe_key(key: str) -> str:
    """MLflow keys allow only word characters, ``.-/:`` and spaces: replace the rest."""
    return _BAD_KEY_CHARS.sub("_", key)
