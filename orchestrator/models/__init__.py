"""detectron2 models we train: the architectures available and where their configs live.

Importing this package is cheap (no detectron2): the driver checks ``SUPPORTED_ARCHS`` and
resolves config files before starting anything; ``orchestrator.models.arch`` holds the
detectron2-side configuration.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from orchestrator.errors import InputError

__all__ = ["SUPPORTED_ARCHS", "META_ARCHITECTURES", "PROJECT_ROOT", "resolve_model_config"]

# model.arch -> the MODEL.META_ARCHITECTURE its configs build (detectron2's registry name).
META_ARCHITECTURES: dict[str, str] = {"mask_rcnn": "GeneralizedRCNN", "blendmask": "BlendMask",
                                      "condinst": "CondInst"}
# Architectures a worker can build (each trains end to end through `orchestrator submit`).
SUPPORTED_ARCHS: frozenset[str] = frozenset(META_ARCHITECTURES)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _zoo_dir() -> Path | None:
    """detectron2's packaged model-zoo configs, found without importing detectron2."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "model_zoo" / "configs"


def resolve_model_config(ref: str, base: Path | None = None) -> Path:
    """``model.config`` as an absolute path: ``zoo:<path>``, or relative to the working
    directory, or to the project root (so ``configs/...`` works from anywhere)."""
    if ref.startswith("zoo:"):
        zoo = _zoo_dir()
        candidates = [zoo / ref.removeprefix("zoo:")] if zoo else []
    else:
        path = Path(ref).expanduser()
        candidates = [path] if path.is_absolute() else [(base or Path.cwd()) / path,
                                                         PROJECT_ROOT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates) or "detectron2 is not installed"
    raise InputError(f"model.config: '{ref}' not found (looked at {tried})")
