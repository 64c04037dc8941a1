"""An MLflow run -> its detectron2 cfg, model (final checkpoint) and class names.

Everything comes from the run's artifacts (``config.yaml``, ``checkpoints/model_final.pth``,
``classes.json``, and ``stuff_classes.json`` for panoptic runs), its ``model`` tag and, for
earlier checkpoints, the Ray Train checkpoints in its ``run.storage_path`` (a folder, or
object storage read through pyarrow as Ray wrote it), so a run can be used from any machine
that reaches the tracking store, without the job spec or the dataset.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode, get_cfg

from orchestrator.errors import InputError
from orchestrator.secrets import MASK, redact_urls
from orchestrator.training.hooks import CHECKPOINT_FILE

__all__ = ["LoadedRun", "load_run", "CHECKPOINT_ARTIFACT", "CLASSES_ARTIFACT",
           "STUFF_CLASSES_ARTIFACT"]

CHECKPOINT_ARTIFACT = "checkpoints/model_final.pth"
CONFIG_ARTIFACT = "config.yaml"
CLASSES_ARTIFACT = "classes.json"
# Panoptic runs: the stuff class names, contiguous ids 1..S in order (0 is "things").
STUFF_CLASSES_ARTIFACT = "stuff_classes.json"


@dataclass(frozen=True)
class LoadedRun:
    """A model ready for inference (eval mode) and what is needed to read its outputs."""

    run_id: str
    run_name: str
    cfg: CfgNode
    model: torch.nn.Module
    class_names: tuple[str, ...]
    stuff_names: tuple[str, ...] = ()  # panoptic runs: stuff labels 1..S; () elsewhere


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow download progress bars (three per run): our own output says what happens."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _download(client: Any, run: Any, artifact: str, into: Path, *, hint: str) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        with _quiet_downloads():
            return Path(client.download_artifacts(run.info.run_id, artifact, str(into)))
    except (MlflowException, OSError) as exc:
        raise InputError(f"run {run.info.run_id} ({run.info.run_name}) has no artifact "
                         f"'{artifact}': {hint} ({type(exc).__name__})") from None


def _class_names(client: Any, run: Any, into: Path,
                 artifact: str = CLASSES_ARTIFACT) -> tuple[str, ...]:
    """The recorded class names (``artifact``: thing or stuff classes), or () for runs that
    did not record them (logged before, or without stuff)."""
    from mlflow.exceptions import MlflowException

    try:
        with _quiet_downloads():
            path = client.download_artifacts(run.info.run_id, artifact, str(into))
        names = json.loads(Path(path).read_text(encoding="utf-8"))
    except (MlflowException, OSError, ValueError):
        return ()
    return tuple(str(n) for n in names) if isinstance(names, list) else ()


def _build_cfg(run: Any, config: Path, *, score: float, device: str) -> CfgNode:
    """The training cfg with the arch's extra keys, the test threshold and the device."""
    from orchestrator.models.arch import get_arch
    from orchestrator.training.config import set_dotted

    arch_name = run.data.tags.get("model") or run.data.params.get("spec.model.arch", "mask_rcnn")
    try:
        arch = get_arch(arch_name)
    except ValueError as exc:
        raise InputError(f"run {run.info.run_id}: {exc}") from None
    cfg = get_cfg()
    if arch.add_config is not None:
        arch.add_config(cfg)
    cfg.ORCHESTRATOR = CfgNode({}, new_allowed=True)  # our keys, as the worker wrote them
    cfg.merge_from_file(str(config))
    for key in arch.score_thresh_keys:
        set_dotted(cfg, key, score)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    return cfg


def _storage(run: Any) -> tuple[Any, str] | None:
    """The run's Ray Train folder as (pyarrow filesystem, path): a local folder or object
    storage (``s3://``), read as Ray wrote it. Credentials masked in the recorded URI come from
    the environment (``AWS_ACCESS_KEY_ID``...), as for the workers."""
    from pyarrow.fs import FileSystem, LocalFileSystem

    storage = run.data.params.get("spec.run.storage_path", "")
    name = run.data.tags.get("ray_run_name", "")
    if not storage or not name:
        return None
    if "://" not in storage:
        return LocalFileSystem(), str(Path(storage) / name)
    try:
        fs, path = FileSystem.from_uri(storage.replace(f"://{MASK}@", "://", 1))
    except Exception as exc:  # pyarrow's errors say what is wrong with the URI
        raise InputError(f"run {run.info.run_id}: its storage path {redact_urls(storage)} "
                         f"cannot be read ({exc})") from None
    return fs, f"{path.rstrip('/')}/{name}"


def _ray_checkpoints(run: Any, fs: Any, folder: str) -> dict[int, str]:
    """The run's Ray Train checkpoints by iteration (``RayCheckpointHook`` names them
    ``iter_NNNNNNN``) in its Ray Train ``folder``; each is a path in ``fs``."""
    from pyarrow.fs import FileSelector, FileType

    found = {}
    try:
        for entry in fs.get_file_info(FileSelector(folder, allow_not_found=True)):
            if entry.type == FileType.Directory and entry.base_name.startswith("iter_") \
                    and entry.base_name[5:].isdigit():
                weights = f"{entry.path}/{CHECKPOINT_FILE}"
                if fs.get_file_info(weights).type == FileType.File:
                    found[int(entry.base_name[5:])] = weights
    except OSError as exc:
        raise InputError(f"run {run.info.run_id}: its checkpoints in "
                         f"{redact_urls(run.data.params['spec.run.storage_path'])} cannot be "
                         f"listed ({exc})") from None
    return found


def _fetch(fs: Any, weights: str, into: Path) -> Path:
    """A checkpoint of :func:`_ray_checkpoints` as a local file (object storage: downloaded)."""
    import shutil

    from pyarrow.fs import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return Path(weights)
    target = into / f"{Path(weights).parent.name}-{CHECKPOINT_FILE}"
    with fs.open_input_stream(weights) as source, target.open("wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
    return target


def _best_iteration(client: Any, run: Any, available: dict[int, str]) -> int:
    """The checkpoint at the evaluation with the highest mask AP (box AP without masks).
    The final evaluation is logged one step after the last checkpoint's iteration."""
    for key in ("segm/AP", "bbox/AP"):
        scored = []
        for metric in client.get_metric_history(run.info.run_id, key):
            step = next((s for s in (metric.step, metric.step - 1) if s in available), None)
            if step is not None and metric.value == metric.value:  # NaN: nothing detected
                scored.append((metric.value, step))
        if scored:
            return max(scored)[1]
    raise InputError(f"--checkpoint best: run {run.info.run_id} has no evaluation at an "
                     "iteration with a checkpoint; give an iteration or 'final'")


def _checkpoint(client: Any, run: Any, which: str, into: Path) -> Path:
    """``final`` (the MLflow artifact), ``best``, or an iteration (Ray checkpoints)."""
    if which == "final":
        hint = "only finished trainings log it; pick a FINISHED run or give an iteration"
        return _download(client, run, CHECKPOINT_ARTIFACT, into, hint=hint)
    located = _storage(run)  # one filesystem for the listing and the download
    fs, folder = located or (None, "")
    available = _ray_checkpoints(run, fs, folder) if located else {}
    if which == "best":
        return _fetch(fs, available[_best_iteration(client, run, available)], into)
    if not which.isdigit() or int(which) not in available:
        have = ", ".join(map(str, sorted(available))) or "none in the run's storage path"
        raise InputError(f"--checkpoint {which}: use final, best or an iteration with a "
                         f"checkpoint ({have})")
    return _fetch(fs, available[int(which)], into)


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise InputError(f"--device {device}: use cpu or cuda")


def load_run(ref: str, *, tracking_uri: str, score: float = 0.5, device: str = "cpu",
             checkpoint: str = "final") -> LoadedRun:
    """Resolve ``ref`` (run id or name), fetch its config and the chosen checkpoint (``final``,
    ``best`` or an iteration) and build the model in eval mode with threshold ``score``."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking.compare import resolve_run

    _check_device(device)
    client = MlflowClient(tracking_uri=tracking_uri)
    run = resolve_run(client, ref)
    with tempfile.TemporaryDirectory(prefix="orchestrator-predict-") as tmp:
        weights = _checkpoint(client, run, checkpoint, Path(tmp))
        config = _download(client, run, CONFIG_ARTIFACT, Path(tmp),
                           hint="the run never started training")
        cfg = _build_cfg(run, config, score=score, device=device)
        model = build_model(cfg)
        DetectionCheckpointer(model).load(str(weights))
        names = _class_names(client, run, Path(tmp))
        stuff = _class_names(client, run, Path(tmp), STUFF_CLASSES_ARTIFACT)
    model.eval()
    return LoadedRun(run_id=run.info.run_id, run_name=run.info.run_name or run.info.run_id,
                     cfg=cfg, model=model, class_names=names, stuff_names=stuff)
