"""Driver-side checks of a model config, before Ray starts (plain YAML, no detectron2 import).

A detectron2 config names its parents in ``_BASE_`` (paths relative to the file); a key's value
is the nearest file's, then the job spec's ``model.opts`` override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import InputError

__all__ = ["config_value", "is_panoptic_config", "check_trainable", "check_arch",
           "check_model_config"]

PANOPTIC_KEY = "MODEL.PANOPTIC_FPN.COMBINE.ENABLED"
META_KEY = "MODEL.META_ARCHITECTURE"
D2_DEFAULT_META = "GeneralizedRCNN"  # detectron2's default, for configs that set none


def _lookup(node: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def config_value(config_file: Path, dotted: str, opts: list[Any] | None = None,
                 _seen: frozenset[Path] = frozenset()) -> Any:
    """The value ``dotted`` gets from a config file, its ``_BASE_`` chain and opts (None when
    no file sets it, i.e. detectron2's default)."""
    opts = list(opts or [])
    for key, value in zip(opts[::2], opts[1::2], strict=True):
        if key == dotted:
            return yaml.safe_load(value) if isinstance(value, str) else value
    path = config_file.resolve()
    if path in _seen:
        raise InputError(f"model.config: {path}: _BASE_ loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"model.config: cannot read {path}: {exc}") from None
    found, value = _lookup(raw, dotted)
    if found:
        return value
    base = raw.get("_BASE_") if isinstance(raw, dict) else None
    if not base:
        return None
    return config_value(path.parent / base, dotted, None, _seen | {path})


def is_panoptic_config(config_file: Path, opts: list[Any] | None = None) -> bool:
    """Does the config train the panoptic branch: ``PANOPTIC_KEY`` True, or a config under a
    ``Panoptic/`` folder that leaves it unset?"""
    value = config_value(config_file, PANOPTIC_KEY, opts)
    return value is True or (value is None and "Panoptic" in config_file.parts)


def check_trainable(config_file: Path, opts: list[Any] | None = None, *,
                    panoptic_data: bool, field: str = "data.train") -> str | None:
    """A panoptic config needs panoptic data (its semantic head trains on the stuff maps);
    instance-only data is refused. Returns a note for panoptic data under an instance-only
    config (it trains the thing instances only), else None."""
    panoptic = is_panoptic_config(config_file, opts)
    if panoptic and not panoptic_data:
        raise InputError(
            f"model.config: {config_file} is a panoptic config ({PANOPTIC_KEY} is True) but "
            f"{field} has no panoptic annotations; give {field}.panoptic_json and "
            f"{field}.panoptic_root (and optionally sem_seg_root) beside json_file, a panoptic "
            "name such as coco_2017_train_panoptic_separated, or data.synthetic.stuff_classes "
            f"> 0; or train instances only with a config without {PANOPTIC_KEY}")
    if panoptic_data and not panoptic:
        return (f"{field} is panoptic but model.config {config_file.name} is not: training "
                "the thing instances only (the stuff maps are unused)")
    return None


def check_arch(config_file: Path, arch: str, opts: list[Any] | None = None) -> None:
    """``model.arch`` must name the model the config builds: otherwise the arch's extra config
    keys, class-count keys and data mapper would be applied to another model."""
    from orchestrator.models import META_ARCHITECTURES

    builds = config_value(config_file, META_KEY, opts) or D2_DEFAULT_META
    expected = META_ARCHITECTURES.get(arch)
    if expected is not None and builds != expected:
        fits = [a for a, meta in META_ARCHITECTURES.items() if meta == builds]
        fix = (f"set model.arch: {fits[0]}" if fits else
               f"use a config that builds {expected}")
        raise InputError(f"model.arch: '{arch}' builds {expected}, but model.config "
                         f"{config_file} builds {META_KEY} {builds}; {fix}")


def check_model_config(config_file: Path, arch: str, opts: list[Any] | None = None) -> None:
    """Every offline check of ``model.config`` against the spec (``check_trainable`` needs
    the resolved data: the pre-flight's "panoptic config and data" check runs it)."""
    check_arch(config_file, arch, opts)
