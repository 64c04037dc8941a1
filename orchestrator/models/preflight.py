"""Driver-side checks of a model config, before Ray starts (plain YAML, no detectron2 import).

A detectron2 config names its parents in ``_BASE_`` (paths relative to the file); a key's value
is the nearest file's, then the job spec's ``model.opts`` override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import InputError

__all__ = ["config_value", "check_trainable", "check_arch", "check_model_config"]

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


def check_trainable(config_file: Path, opts: list[Any] | None = None) -> None:
    """Refuse configs we can build but not train (the Panoptic/ BlendMask configs)."""
    if config_value(config_file, PANOPTIC_KEY, opts) is True:
        raise InputError(
            f"model.config: {config_file}: panoptic training is not supported yet "
            f"({PANOPTIC_KEY} is True); the Panoptic/ configs build and load the published "
            "checkpoints, use a non-panoptic config (e.g. configs/blendmask/R_50_3x.yaml) to "
            "train")


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
    """Every offline check of ``model.config`` against the spec."""
    check_arch(config_file, arch, opts)
    check_trainable(config_file, opts)
