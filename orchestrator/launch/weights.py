"""Read a weights file as detectron2's ``DetectionCheckpointer`` would, and say how it fits a
model before any worker loads it.

detectron2 loads whatever matches and only *logs* the rest: a checkpoint for another model
trains from (mostly) random weights without an error. Here the same matching decides up front:
nothing matching, or shapes that differ outside the class-count-dependent heads, is an error;
missing or unused keys and class-head shape differences (normal when fine-tuning on another
dataset, and skipped by detectron2) are notes, worded as detectron2 words them.

A weights URL is downloaded once per machine into iopath's cache, and trusted from then on:
``check_download`` reads a cached file once and records its size and checksum beside it
(``.<name>.record.json``), checks it against that record later, and removes a cut or garbled
file so that detectron2 downloads it again.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError
from orchestrator.integrity import file_record, read_record, record_problem, write_record

__all__ = ["Checkpoint", "WeightsReport", "read_weights", "compare_weights", "check_download"]

MAX_LISTED = 5


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's state dict and whether detectron2 matches its names by heuristics
    (Detectron/Caffe2 ``.pkl`` and pycls ``.pyth`` files) or exactly (its own ``.pth``)."""

    state: dict[str, Any]
    heuristic: bool = False
    caffe2: bool = False


@dataclass
class WeightsReport:
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def _not_checkpoint(path: Path, why: str) -> InputError:
    return InputError(f"model.weights: {path}: not a checkpoint detectron2 can load ({why})")


def read_weights(path: Path) -> Checkpoint:
    """The state dict of a ``.pkl`` (detectron2 zoo or Caffe2), ``.pyth`` or torch file."""
    import torch

    try:
        if path.suffix == ".pkl":
            with path.open("rb") as f:
                data = pickle.load(f, encoding="latin1")  # noqa: S301 (detectron2 does the same)
            if isinstance(data, dict) and "model" in data and "__author__" in data:
                return Checkpoint(_state(path, data["model"]),
                                  heuristic=bool(data.get("matching_heuristics")))
            if isinstance(data, dict) and "blobs" in data:
                data = data["blobs"]
            state = _state(path, data)
            return Checkpoint({k: v for k, v in state.items() if not k.endswith("_momentum")},
                              heuristic=True, caffe2=True)
        data = torch.load(path, map_location="cpu")
    except InputError:
        raise
    except Exception as exc:  # torch/pickle raise many kinds for a file that is not one
        raise _not_checkpoint(path, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if path.suffix == ".pyth":
        return Checkpoint(_state(path, data.get("model_state") if isinstance(data, dict)
                                 else None), heuristic=True)
    if isinstance(data, dict) and "model" in data:
        data = data["model"]
    return Checkpoint(_state(path, data))


def _state(path: Path, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not data:
        raise _not_checkpoint(path, f"no state dict in it (found {type(data).__name__})")
    state = {str(k): v for k, v in data.items() if hasattr(v, "shape")}
    if not state:
        raise _not_checkpoint(path, "no tensors in it")
    return state


def _strip_module(state: dict[str, Any]) -> dict[str, Any]:
    """DDP-saved checkpoints carry a ``module.`` prefix that detectron2 strips."""
    if state and all(k.startswith("module.") for k in state):
        return {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _listed(keys: list[str]) -> str:
    more = f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def _skip_message(key: str, ckpt: tuple[int, ...], model: tuple[int, ...]) -> str:
    return (f"Skip loading parameter '{key}' to the model due to incompatible shapes: "
            f"{ckpt} in the checkpoint but {model} in the model!")


def compare_weights(model: Any, checkpoint: Checkpoint, *,
                    class_dependent: Callable[[], set[str]] = set) -> WeightsReport:
    """How ``checkpoint`` loads into ``model`` under detectron2's matching rules.

    ``class_dependent`` names the parameters whose shape follows the class count (asked only
    when some shape differs)."""
    model_state = model.state_dict()
    state = _strip_module(dict(checkpoint.state))
    if checkpoint.heuristic:
        from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

        aligned = align_and_update_state_dicts(model_state, state,
                                               c2_conversion=checkpoint.caffe2)
        state = {k: v for k, v in aligned.items() if k in model_state}
    report = WeightsReport()
    matched = [k for k in state if k in model_state]
    bad_shapes = [(k, tuple(state[k].shape), tuple(model_state[k].shape)) for k in matched
                  if tuple(state[k].shape) != tuple(model_state[k].shape)]
    loaded = len(matched) - len(bad_shapes)
    if loaded == 0:
        shown = ("; ".join(_skip_message(*b) for b in bad_shapes[:MAX_LISTED]) if bad_shapes
                 else f"checkpoint keys: {_listed(sorted(checkpoint.state))}")
        report.error = (f"none of its {len(checkpoint.state)} tensors fits the model's "
                        f"{len(model_state)} (is it for another architecture?); detectron2 "
                        f"would train from random weights. {shown}")
        return report
    expected = class_dependent() if bad_shapes else set()
    unexpected_shapes = [b for b in bad_shapes if b[0] not in expected]
    if unexpected_shapes:
        report.error = (f"{len(unexpected_shapes)} tensor(s) do not fit the model (detectron2 "
                        "would skip them and train those layers from random weights): "
                        + "; ".join(_skip_message(*b) for b in unexpected_shapes[:MAX_LISTED]))
        return report
    if bad_shapes:
        report.notes.append(f"{len(bad_shapes)} class-count-dependent tensor(s) differ in shape "
                            "and detectron2 will skip them (expected when fine-tuning on "
                            f"another dataset): {_listed([b[0] for b in bad_shapes])}")
    missing = sorted(k for k in model_state if k not in state
                     and k not in ("pixel_mean", "pixel_std"))
    if missing:
        report.notes.append(f"{len(missing)} of the model's {len(model_state)} weights are not "
                            f"in the checkpoint and start random: {_listed(missing)}")
    if not checkpoint.heuristic:
        unused = sorted(k for k in state if k not in model_state
                        and "anchor_generator.cell_anchors" not in k)
        if unused:
            report.notes.append(f"{len(unused)} checkpoint key(s) are not used by the model: "
                                f"{_listed(unused)}")
    report.notes.insert(0, f"{loaded} of the model's {len(model_state)} weights load from the "
                           "checkpoint")
    return report


def _download_problem(path: Path, record_path: Path) -> str | None:
    record = read_record(record_path)
    if record is not None:
        return record_problem(path.parent, {path.name: record})
    try:  # not read since it was downloaded: read it whole once, then record it
        read_weights(path)
    except InputError as exc:
        return str(exc).rsplit("(", 1)[-1].rstrip(")")
    write_record(record_path, file_record(path.parent, [path.name])[path.name])
    return None


def check_download(path: Path) -> str | None:
    """Check a cached download of a weights URL; remove it if it is damaged (detectron2 then
    downloads it again) and return a warning saying so, else None."""
    record_path = path.with_name(f".{path.name}.record.json")
    problem = _download_problem(path, record_path)
    if problem is None:
        return None
    path.unlink(missing_ok=True)
    record_path.unlink(missing_ok=True)
    return (f"the cached download {path} was damaged ({problem}); removed, it is "
            "downloaded again")
