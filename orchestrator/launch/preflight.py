"""Pre-flight: what the driver can check fails here, in seconds, before Ray starts and before
the MLflow run exists (exit 2, the field or file named).

Two stages. ``plan`` checks are offline and cheap (no detectron2, no network), so they also run
on ``submit --dry-run``. ``launch`` checks run on a real submit only, where the driver runs (on
a cluster: on its head): local resources, the tracking server and a weights URL (each probed
with a short timeout), and the detectron2 side -- the worker's cfg merged and the model built
here, the weights file read and matched against it as detectron2's checkpointer would.

Checks live in a registry (``CHECKS``), in the order they run; README's table lists them.
"""

from __future__ import annotations

import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.errors import InputError
from orchestrator.launch.prepared import prepare
from orchestrator.secrets import redact_urls

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.launch.prepared import Prepared
    from orchestrator.spec import JobSpec

__all__ = ["Check", "CHECKS", "Context", "run_checks", "check_offline", "PROBE_TIMEOUT_S"]

Stage = Literal["plan", "launch"]
# Each network probe gives up after this long: an offline machine answers in seconds.
PROBE_TIMEOUT_S = float(os.environ.get("ORCHESTRATOR_PROBE_TIMEOUT_S", "5"))
_D2_URL = "https://dl.fbaipublicfiles.com/detectron2/"


@dataclass
class Context:
    """What the checks share: the prepared job, and the cfg/model built once for several."""

    prepared: Prepared
    notes: list[str] = field(default_factory=list)
    cfg: Any = None
    model: Any = None
    checkpoint: Any = None


@dataclass(frozen=True)
class Check:
    """One pre-flight check: what it covers (for the table) and when it runs."""

    name: str
    fields: str
    stage: Stage
    run: Callable[[Context], None]


CHECKS: list[Check] = []


def _check(name: str, fields: str, stage: Stage) -> Callable[[Callable[[Context], None]],
                                                             Callable[[Context], None]]:
    def register(func: Callable[[Context], None]) -> Callable[[Context], None]:
        CHECKS.append(Check(name, fields, stage, func))
        return func
    return register


def run_checks(prepared: Prepared, stage: Stage, *,
               console: Console | None = None) -> list[tuple[str, float]]:
    """Run every check of ``stage`` in order; the first failure raises InputError.

    Returns (check name, seconds) per check; notes (warnings) are printed to ``console``.
    """
    ctx = Context(prepared)
    timings = []
    for check in CHECKS:
        if check.stage != stage:
            continue
        start = time.perf_counter()
        check.run(ctx)
        timings.append((check.name, time.perf_counter() - start))
    if console is not None:
        from rich.text import Text

        for note in ctx.notes:  # Text: a note's brackets are shown, never read as markup
            console.print(Text.assemble(("pre-flight:", "yellow"), " ", note))
    return timings


def check_offline(spec: JobSpec) -> str | None:
    """Everything ``submit --dry-run`` refuses that can be known offline, writing nothing
    (``orchestrator validate``): model.config against model.arch, env_from, the scaling plan
    (steps against max_iter, ...) and the ``plan`` checks, for each child of a sweep.

    Returns a note when an epoch schedule waits for data that is not here to count."""
    from orchestrator.plan import ImageCountUnknown
    from orchestrator.spec import expand_sweep

    children = [child for _, child in expand_sweep(spec)] if spec.sweep else [spec]
    for child in children:
        try:
            prepared = prepare(child, strict=False, generate=False)
        except ImageCountUnknown:
            return "schedule not checked: solver.epochs needs the data's image count"
        run_checks(prepared, "plan")
    return None


# --------------------------------------------------------------------------- plan stage


def _writable_dir_problem(path: Path) -> str | None:
    """Why a folder cannot be created or written to (None if it can); creates nothing."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return (f"cannot be created: {existing} is a file" if existing != path
                else "is a file, not a folder")
    try:  # os.access says yes to root even on a read-only file system: try for real
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        what = "cannot be written to" if existing == path else f"cannot be created in {existing}"
        return f"{what} ({exc.strerror or exc})"
    return None


@_check("output folders", "run.output_dir, run.storage_path, the sqlite tracking folder", "plan")
def check_folders(ctx: Context) -> None:
    spec = ctx.prepared.spec
    folders = [("run.output_dir", spec.run.output_dir)]
    if "://" not in spec.run.storage_path:
        folders.append(("run.storage_path", spec.run.storage_path))
    uri = spec.tracking.tracking_uri or ""
    if uri.startswith("sqlite:///"):
        folders.append(("tracking.tracking_uri", str(Path(uri.removeprefix("sqlite:///")).parent)))
    for name, folder in folders:
        problem = _writable_dir_problem(Path(folder))
        if problem:
            raise InputError(f"{name}: {folder}: {problem}")


@_check("weights file readable", "model.weights (local file)", "plan")
def check_weights_file(ctx: Context) -> None:
    weights = ctx.prepared.spec.model.weights
    if not weights or "://" in weights:
        return
    path = Path(weights)
    if not path.exists():
        raise InputError(f"model.weights: {weights}: file not found")
    if not path.is_file():
        raise InputError(f"model.weights: {weights}: is a folder, not a checkpoint file")
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise InputError(f"model.weights: {weights}: cannot be read ({exc.strerror or exc})"
                         ) from None


@_check("training data not empty", "data.train", "plan")
def check_train_data(ctx: Context) -> None:
    data = ctx.prepared.data
    if data.usable_images != 0:  # None: not known yet (dry run with missing files)
        return
    from orchestrator.data.check import load_coco

    coco = load_coco(Path(data.train.json_file))
    if not coco["images"]:
        raise InputError(f"data.train: {data.train.json_file} lists no images: nothing to "
                         "train on")
    raise InputError(f"data.train: {data.train.json_file}: none of its "
                     f"{len(coco['images'])} images has a usable annotation (non-crowd, with "
                     f"{len(coco['annotations'])} annotations in all); detectron2 would drop "
                     "every image and have nothing to train on")


@_check("panoptic config and data", "model.config, model.opts, data.train", "plan")
def check_panoptic_training(ctx: Context) -> None:
    """A panoptic config trains its semantic head on stuff maps: instance-only data cannot
    feed it. The data's panoptic files themselves were checked while resolving it."""
    from orchestrator.models.preflight import check_trainable

    prepared = ctx.prepared
    opts = list(prepared.spec.model.opts)
    note = check_trainable(prepared.config_file, opts, panoptic_data=prepared.data.train.panoptic)
    test = prepared.data.test
    if note is None and test is not None and prepared.data.train.panoptic and not test.panoptic:
        note = ("data.test has no panoptic annotations: evaluation reports box and mask AP "
                "only, no PQ")
    if note:
        ctx.notes.append(note)


# --------------------------------------------------------------------------- launch stage


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@_check("local resources", "resources.*, run.num_cpus (embedded Ray only)", "launch")
def check_resources(ctx: Context) -> None:
    """On the embedded Ray, workers that do not fit this machine would wait forever."""
    from orchestrator.launch.embedded import check_local_resources

    spec = ctx.prepared.spec
    if os.environ.get("RAY_ADDRESS"):
        return  # a cluster's driver: the cluster (and its autoscaler) decides
    res = spec.resources
    need = res.min_workers * res.cpus_per_worker
    if spec.run.num_cpus is not None:
        have, where = spec.run.num_cpus, "run.num_cpus gives the embedded Ray"
    else:
        have, where = _usable_cpus(), "this machine has"
    if need > have:
        raise InputError(
            f"resources: {res.min_workers} workers x {res.cpus_per_worker:g} CPUs need "
            f"{need:g} CPUs but {where} {have:g}; lower resources.workers or "
            "resources.cpus_per_worker, set run.num_cpus to oversubscribe on purpose, or "
            "submit to a cluster with --address")
    check_local_resources(spec)  # GPUs


@_check("S3 storage usable", "run.storage_path (s3://)", "launch")
def check_s3_storage(ctx: Context) -> None:
    """Endpoint, credentials, bucket and write access, asked of the S3 server now rather than
    found out by Ray at the first checkpoint upload."""
    storage = ctx.prepared.spec.run.storage_path
    if not storage.startswith("s3://"):
        return
    from orchestrator.launch.storage_probe import probe_s3

    problem = probe_s3(storage, timeout=PROBE_TIMEOUT_S)
    if problem:
        raise InputError(f"run.storage_path: {redact_urls(storage)}: {problem}")


def _probe(url: str, *, method: str = "GET") -> str | None:
    """None if something answers HTTP at ``url`` within the timeout, else why not.
    Any HTTP status counts as an answer: the server is there."""
    return _ask(url, method=method)[1]


def _ask(url: str, *, method: str = "GET") -> tuple[int | None, str | None]:
    """(HTTP status, None) if something answers at ``url`` within the timeout, else
    (None, why not)."""
    parts = urllib.parse.urlsplit(url)
    headers = {}
    if parts.username is not None:
        import base64

        token = f"{parts.username}:{parts.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        netloc = parts.hostname or ""
        url = urllib.parse.urlunsplit(parts._replace(
            netloc=netloc + (f":{parts.port}" if parts.port else "")))
    request = urllib.request.Request(url, method=method, headers=headers)
    context = None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        import ssl  # MLflow skips certificate checks then: so does the probe

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S,  # noqa: S310
                                    context=context) as response:
            return int(response.status), None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(reason).__name__}: {reason}"


@_check("tracking server reachable", "tracking.tracking_uri (http/https)", "launch")
def check_tracking(ctx: Context) -> None:
    """MLflow retries a dead server for minutes without a word; ask once, briefly."""
    uri = ctx.prepared.spec.tracking.tracking_uri or ""
    if not uri.startswith(("http://", "https://")):
        return
    problem = _probe(uri.rstrip("/") + "/health")
    if problem:
        raise InputError(f"tracking.tracking_uri: no MLflow server answers at {redact_urls(uri)} "
                         f"within {PROBE_TIMEOUT_S:g} s ({problem}); start it (orchestrator ui, "
                         "mlflow server) or leave tracking.tracking_uri empty for a local "
                         "sqlite store")


@_check("tracking artifact store", "tracking.tracking_uri (server with proxied artifacts)",
        "launch")
def check_tracking_artifacts(ctx: Context) -> None:
    """A server that proxies artifacts answers /health even when its object store is down;
    listing its artifact root finds out (a server that serves no artifacts says so: 503)."""
    uri = ctx.prepared.spec.tracking.tracking_uri or ""
    if not uri.startswith(("http://", "https://")):
        return
    status, problem = _ask(uri.rstrip("/") + "/api/2.0/mlflow-artifacts/artifacts")
    if problem is None and (status is None or status < 500 or status == 503):
        return
    why = problem or f"HTTP {status} listing its artifacts"
    raise InputError(f"tracking.tracking_uri: the MLflow server at {redact_urls(uri)} answers "
                     f"but its artifact store does not ({why}); checkpoints and "
                     "model_final.pth would be lost: check the server's "
                     "--artifacts-destination, its S3 endpoint (MLFLOW_S3_ENDPOINT_URL) and "
                     "credentials, and its log")


def _weights_url(weights: str) -> str | None:
    if weights.startswith("detectron2://"):
        return _D2_URL + weights.removeprefix("detectron2://")
    if weights.startswith(("http://", "https://")):
        return weights
    return None


def _cached_download(url: str) -> Path | None:
    """Where detectron2's PathManager (iopath) keeps a downloaded URL, if it is there."""
    from iopath.common.file_io import get_cache_dir

    parts = urllib.parse.urlsplit(url)
    cached = Path(get_cache_dir()) / parts.path.lstrip("/")
    return cached if cached.is_file() else None


@_check("weights URL reachable", "model.weights (http/https/detectron2://)", "launch")
def check_weights_url(ctx: Context) -> None:
    """A cached download is checked (a damaged one removed, to be downloaded again); without
    one, the URL must answer."""
    from orchestrator.launch.weights import check_download

    weights = ctx.prepared.spec.model.weights
    url = _weights_url(weights)
    if url is None:
        return
    cached = _cached_download(url)
    if cached is not None:
        damaged = check_download(cached)
        if damaged is None:
            return
        ctx.notes.append(f"model.weights: {damaged}")
    problem = _probe(url, method="HEAD")
    if problem:
        raise InputError(f"model.weights: {redact_urls(weights)} cannot be downloaded from "
                         f"{redact_urls(url)} within {PROBE_TIMEOUT_S:g} s ({problem}); is this "
                         "machine offline? Download the file elsewhere and give its path")


@_check("weights are a checkpoint", "model.weights (local file)", "launch")
def check_weights_readable(ctx: Context) -> None:
    """Read the file (torch, not yet detectron2): a file that is no checkpoint fails sooner."""
    weights = ctx.prepared.spec.model.weights
    if weights and "://" not in weights:
        from orchestrator.launch.weights import read_weights

        ctx.checkpoint = read_weights(Path(weights))


def _quiet_imports() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch|fvcore|detectron2")
    warnings.filterwarnings("ignore", category=DeprecationWarning,
                            module="torch|fvcore|detectron2")


def _d2_key_hint(cfg: Any, key: str) -> str:
    """'did you mean' among the cfg's dotted keys."""
    import difflib

    def keys(node: Any, prefix: str = "") -> list[str]:
        out = []
        for name, value in node.items():
            out.extend(keys(value, f"{prefix}{name}.") if isinstance(value, dict)
                       else [f"{prefix}{name}"])
        return out

    close = difflib.get_close_matches(key, keys(cfg), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _missing_key(exc: BaseException) -> str | None:
    text = str(exc)
    for marker in ("Non-existent config key: ", "Non-existent key: "):  # yacs says either
        if marker in text:
            return text.split(marker, 1)[1].split()[0].strip("'\"")
    return None


@_check("detectron2 config", "model.config, model.opts", "launch")
def check_cfg(ctx: Context) -> None:
    """Merge model.config and model.opts into a cfg exactly as the worker will."""
    _quiet_imports()
    from detectron2.config import get_cfg

    from orchestrator.job import WorkerJob
    from orchestrator.models.arch import get_arch
    from orchestrator.training.config import build_cfg

    prepared = ctx.prepared
    base = get_cfg()
    arch = get_arch(prepared.spec.model.arch)
    if arch.add_config is not None:
        arch.add_config(base)
    job = WorkerJob(spec=prepared.spec, plan=prepared.plan, data=prepared.data,
                    config_file=str(prepared.config_file), output_dir=prepared.spec.run.output_dir,
                    run_id="preflight", tracking_uri=prepared.spec.tracking.tracking_uri or "")
    try:
        ctx.cfg = build_cfg(job, device="cpu")
    except (KeyError, ValueError, TypeError, AssertionError, AttributeError) as exc:
        key = _missing_key(exc)
        opts_keys = [str(k) for k in prepared.spec.model.opts[0::2]]
        if key and key in opts_keys:
            raise InputError(f"model.opts: detectron2 has no config key {key}"
                             f"{_d2_key_hint(base, key)}") from None
        if key:
            raise InputError(f"model.config: {prepared.config_file}: detectron2 has no config "
                             f"key {key}{_d2_key_hint(base, key)}") from None
        raise InputError(f"model.config / model.opts: detectron2 refuses the config "
                         f"({type(exc).__name__}: {exc})") from None


def _build_model(cfg: Any, device: str) -> Any:
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    if device != "meta":
        return build_model(cfg)
    import torch

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return build_model(cfg)


@_check("model builds", "model.arch, model.config, model.opts", "launch")
def check_model(ctx: Context) -> None:
    """Build the model as the worker will (parameters on the meta device: shapes only)."""
    if ctx.cfg is None:
        return
    try:
        ctx.model = _build_model(ctx.cfg, "meta")
    except Exception:
        try:  # some layer may not build on meta: build it for real before blaming the config
            ctx.model = _build_model(ctx.cfg, "cpu")
        except Exception as exc:
            raise InputError(f"model: detectron2 cannot build {ctx.prepared.spec.model.arch} "
                             f"from model.config + model.opts ({type(exc).__name__}: {exc})"
                             ) from None


@_check("weights fit the model", "model.weights (local file)", "launch")
def check_weights(ctx: Context) -> None:
    weights = ctx.prepared.spec.model.weights
    if ctx.checkpoint is None or ctx.model is None:
        return
    from orchestrator.launch.weights import compare_weights

    report = compare_weights(ctx.model, ctx.checkpoint,
                             class_dependent=lambda: _class_dependent(ctx))
    if report.error:
        raise InputError(f"model.weights: {weights}: {report.error}")
    ctx.notes.extend(f"model.weights: {note}" for note in report.notes)


def _class_dependent(ctx: Context) -> set[str]:
    """Parameters whose shape follows the class count: detectron2 skips them on purpose when
    fine-tuning on another dataset, so a mismatch there is expected."""
    from orchestrator.models.arch import get_arch

    cfg = ctx.cfg.clone()
    cfg.defrost()
    for key in get_arch(ctx.prepared.spec.model.arch).num_classes_keys:
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = node[leaf] + 1
    try:
        other = _build_model(cfg, "meta")
    except Exception:
        return set()
    ours = ctx.model.state_dict()
    return {k for k, v in other.state_dict().items() if k in ours and ours[k].shape != v.shape}
