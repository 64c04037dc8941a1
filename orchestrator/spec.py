"""Job specs: typed, validated documents from ``jobs/*.yaml`` plus ``key.path=value`` overrides.

Pure Python and pydantic only (no torch, detectron2 or ray), so ``orchestrator validate`` and
``submit --dry-run`` answer at once. pydantic does the validation; this module adds loading,
overrides and error messages that name the file, the field path and a likely fix.

Every iteration count in a spec (``max_iter``, ``warmup_iters``, step iterations, periods) is
given at ``solver.reference_batch``. The plan (``orchestrator.plan``) rescales them to the real
batch, so changing the worker count changes nothing else in a spec.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.errors import InputError
from orchestrator.secrets import ENV_NAME, redact_override, redact_spec, redact_urls
from orchestrator.spec_yaml import load_yaml

__all__ = [
    "ModelSpec",
    "SyntheticSpec",
    "DatasetSpec",
    "DataSpec",
    "default_stuff_root",
    "ResourcesSpec",
    "SolverSpec",
    "EvalSpec",
    "TrackingSpec",
    "RunSpec",
    "JobSpec",
    "load_spec",
    "parse_spec",
    "apply_overrides",
    "expand_sweep",
    "find_specs",
    "max_workers_ceiling",
    "tracking_uri_problem",
]

# strict: 2.5, "4" and true are not counts (pydantic would otherwise accept true as 1).
PositiveInt = Annotated[int, Field(ge=1, strict=True)]
NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]
Amount = Annotated[float, Field(strict=True)]  # ints are fine, booleans and strings are not
# The most workers one job may ask for; a typo such as 1000 instead of 10 fails at once.
MAX_WORKERS_ENV = "ORCHESTRATOR_MAX_WORKERS"
DEFAULT_MAX_WORKERS = 256


class _Strict(BaseModel):
    """Unknown keys are errors; assignments are validated too; every float is finite (inf and
    nan are refused: no rate, threshold or period is infinite). Subclasses' configs add to
    this one (pydantic merges them)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSpec(_Strict):
    """Which detectron2 model to build and from what."""

    arch: Literal["mask_rcnn", "blendmask", "condinst"] = Field(
        description="Meta-architecture family; selects the add_*_config function."
    )
    config: str = Field(
        description="detectron2 yaml config: a path (relative to the working directory or the "
        "project root) or 'zoo:<path>' for detectron2's model zoo."
    )
    weights: str = Field("", description="Initial weights (.pth/.pkl path or URL); '' = random.")
    opts: list[Any] = Field(
        default_factory=list,
        description="detectron2 KEY VALUE overrides, applied after the config file.",
    )

    @model_validator(mode="after")
    def _opts_are_pairs(self) -> ModelSpec:
        if len(self.opts) % 2:
            raise ValueError(
                f"opts must be KEY VALUE pairs, got an odd number of items: {self.opts}"
            )
        return self


class SyntheticSpec(_Strict):
    """The generated shapes set (``orchestrator data synth``), made on demand and cached."""

    num_images: int = Field(200, ge=2, strict=True, description="Images in total (train + val).")
    size: int = Field(128, ge=32, strict=True, description="Image side in pixels.")
    seed: int = Field(0, strict=True, description="Same seed, same dataset.")
    stuff_classes: int = Field(
        0, ge=0, le=8, strict=True,
        description="Background region classes under the shapes; 0 = instances only, > 0 = "
        "panoptic data (COCO panoptic json, segment PNGs and stuff maps).")


class DatasetSpec(_Strict):
    """A COCO-format dataset: a json file and its image folder, or a registered name.

    A panoptic dataset also names its COCO panoptic json and folder of segment PNGs; its
    separated stuff maps are read from ``sem_seg_root`` and derived there when missing.
    """

    name: str | None = Field(None, description="Registered name, e.g. coco_2017_train or "
                             "coco_2017_train_panoptic_separated.")
    json_file: Path | None = Field(None, description="COCO instances json (thing classes).")
    image_root: Path | None = Field(None, description="Folder the json's file_name are under.")
    panoptic_json: Path | None = Field(None, description="COCO panoptic json (with "
                                       "panoptic_root): makes the dataset panoptic.")
    panoptic_root: Path | None = Field(None, description="Folder of the panoptic json's "
                                       "segment PNGs.")
    sem_seg_root: Path | None = Field(
        None, description="Folder of the separated stuff maps (uint8 PNG per panoptic "
        "file_name), derived when missing. Default: beside panoptic_root, its name with "
        "'panoptic_' made 'panoptic_stuff_' (detectron2's COCO layout) or else '_stuff' added.")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        has_files = self.json_file is not None or self.image_root is not None
        if self.name and has_files:
            raise ValueError("give either name or json_file + image_root, not both")
        if not self.name and (self.json_file is None or self.image_root is None):
            raise ValueError("give a registered name, or both json_file and image_root")
        return self

    @model_validator(mode="after")
    def _panoptic_files(self) -> DatasetSpec:
        given = [f for f in ("panoptic_json", "panoptic_root", "sem_seg_root")
                 if getattr(self, f) is not None]
        if given and self.name:
            raise ValueError(f"{', '.join(given)}: only with json_file + image_root; a "
                             f"registered name ('{self.name}') brings its own panoptic files")
        if given and (self.panoptic_json is None or self.panoptic_root is None):
            missing = "panoptic_root" if self.panoptic_json is not None else "panoptic_json"
            raise ValueError(f"{missing} is missing: a panoptic dataset needs both "
                             "panoptic_json and panoptic_root (sem_seg_root is optional)")
        return self

    @property
    def stuff_root(self) -> Path | None:
        """``sem_seg_root``, or its default beside ``panoptic_root`` (None: not panoptic)."""
        if self.sem_seg_root is not None or self.panoptic_root is None:
            return self.sem_seg_root
        return default_stuff_root(self.panoptic_root)


def default_stuff_root(panoptic_root: Path) -> Path:
    """Where the stuff maps of ``panoptic_root`` go when no ``sem_seg_root`` is given:
    ``panoptic_train2017`` -> ``panoptic_stuff_train2017`` (detectron2's COCO layout),
    ``segments`` -> ``segments_stuff``."""
    name = panoptic_root.name
    stuff = ("panoptic_stuff_" + name.removeprefix("panoptic_")
             if name.startswith("panoptic_") else f"{name}_stuff")
    return panoptic_root.with_name(stuff)


class DataSpec(_Strict):
    """Training and evaluation data: generated, or a train/test pair of datasets."""

    synthetic: SyntheticSpec | None = None
    train: DatasetSpec | None = None
    test: DatasetSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if self.synthetic is not None and (self.train or self.test):
            raise ValueError("give either synthetic or train/test datasets, not both")
        if self.synthetic is None and self.train is None:
            raise ValueError("give synthetic: {...} or a train dataset")
        return self


class ResourcesSpec(_Strict):
    """Workers (one per GPU) and what each one gets."""

    workers: PositiveInt | tuple[PositiveInt, PositiveInt] = Field(
        1, description="Ray Train workers (processes); [min, max] trains elastically: the "
        "plan is made for max and recomputed whenever the group restarts at another size.")
    gpus_per_worker: Amount = Field(0, ge=0, description="0 = CPU with gloo; >0 = CUDA with NCCL.")
    cpus_per_worker: Amount = Field(1, gt=0, description="CPUs Ray reserves per worker.")
    ims_per_worker: PositiveInt = Field(2, description="Images per worker per iteration.")

    @model_validator(mode="after")
    def _ordered_range(self) -> ResourcesSpec:
        if self.min_workers > self.max_workers:
            raise ValueError(f"workers range {list(self.workers)} must be [min, max]")  # type: ignore[arg-type]
        return self

    @property
    def min_workers(self) -> int:
        return self.workers[0] if isinstance(self.workers, tuple) else self.workers

    @property
    def max_workers(self) -> int:
        return self.workers[1] if isinstance(self.workers, tuple) else self.workers

    @property
    def elastic(self) -> bool:
        return self.min_workers != self.max_workers


class SolverSpec(_Strict):
    """The reference recipe; the plan scales it to the actual total batch."""

    reference_lr: float = Field(gt=0, description="LR of the recipe at reference_batch.")
    reference_batch: PositiveInt = Field(16, description="Total batch the recipe was tuned for.")
    max_iter: PositiveInt | None = Field(None, description="Iterations at reference_batch.")
    epochs: float | None = Field(None, gt=0, description="Passes over the usable train images.")
    steps: list[float] = Field(default_factory=list, description="LR decay points.")
    steps_unit: Literal["fraction", "iter", "epoch"] = Field(
        "fraction", description="How steps are given: fraction of the schedule, iters, epochs."
    )
    gamma: float = Field(0.1, gt=0, description="LR multiplier at each step.")
    warmup_iters: NonNegativeInt = Field(1000, description="Linear warmup at reference_batch.")
    warmup_factor: float = Field(0.001, gt=0, le=1)
    weight_decay: float = Field(0.0001, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    checkpoint_period: PositiveInt = Field(5000, description="Iterations at reference_batch.")
    clip_gradients: float = Field(0.0, ge=0, description="Max gradient norm; 0 = off.")

    @model_validator(mode="after")
    def _one_schedule(self) -> SolverSpec:
        if (self.max_iter is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_iter or epochs")
        if self.steps_unit == "fraction" and any(not 0 < s < 1 for s in self.steps):
            raise ValueError(f"steps as fractions must lie in (0, 1), got {self.steps}")
        if any(s <= 0 for s in self.steps):
            raise ValueError(f"steps must be positive, got {self.steps}")
        return self


class EvalSpec(_Strict):
    """COCO evaluation during and after training."""

    enabled: bool = True
    period: NonNegativeInt = Field(0, description="Iterations at reference_batch; 0 = end only.")
    score_thresh: float = Field(0.05, ge=0, lt=1, description="Test-time score threshold.")
    max_dets: PositiveInt = Field(100, description="Detections per image.")
    chunk_bytes: PositiveInt = Field(
        256 * 2**20, description="Memory budget for mask postprocessing per chunk (OOM safety)."
    )
    cpu_fallback: bool = Field(True, description="Retry a chunk on CPU after CUDA OOM.")
    visualize: NonNegativeInt = Field(
        4, description="Validation images logged to MLflow with predictions drawn at each "
        "evaluation (the same ones every time); 0 = none."
    )


# What MLflow's client accepts (a plain path too); ``postgresql+psycopg2`` is ``postgresql``.
TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql",
                    "databricks", "databricks-uc", "uc")


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow would refuse ``uri`` (offline, before it is used), or None."""
    if not uri.strip():
        return "is empty"
    match = re.match(r"([A-Za-z][A-Za-z0-9.\-]*)(\+[\w.\-]+)?:", uri)
    if match and match[1].lower() not in TRACKING_SCHEMES:
        return (f"has scheme '{match[1]}', not an MLflow store (use sqlite:///PATH, "
                "http(s)://HOST:PORT, postgresql://, mysql://, file:PATH)")
    return None


class TrackingSpec(_Strict):
    """Where the MLflow run goes."""

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///mlflow.db in the working dir."
    )
    experiment: str = "orchestrator"
    run_name: str | None = Field(None, description="Default: the job name.")
    log_period: PositiveInt = Field(20, description="Iterations between metric writes.")

    @model_validator(mode="after")
    def _known_store(self) -> TrackingSpec:
        problem = self.tracking_uri is not None and tracking_uri_problem(self.tracking_uri)
        if problem:
            raise ValueError(f"tracking_uri {redact_urls(self.tracking_uri or '')} {problem}")
        return self


class RunSpec(_Strict):
    """Ray-side settings of the run."""

    # env: {OMP_NUM_THREADS: 4} means the string "4", as in a shell
    model_config = ConfigDict(extra="forbid", validate_assignment=True,
                              coerce_numbers_to_str=True)

    storage_path: str = Field(
        ".orchestrator/ray", description="Ray Train storage (local dir, NFS or s3://)."
    )
    output_dir: str = Field(".orchestrator/output", description="Per-run detectron2 OUTPUT_DIR.")
    max_failures: NonNegativeInt = Field(0, description="Worker-group restarts on failure.")
    max_preemptions: int = Field(
        -1, ge=-1, description="Worker-group restarts after a node preemption, counted apart "
        "from max_failures; -1: unlimited."
    )
    preemption_check_every: PositiveInt = Field(
        10, description="Iterations between asks for a preemption notice or a SIGTERM (a "
        "barrier across ranks, a few ms): the notice waits at most this many iterations."
    )
    resume: bool = False
    num_cpus: Amount | None = Field(
        None, gt=0, description="CPUs of the embedded Ray (default: enough for the workers)."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment for every worker, e.g. NCCL_SOCKET_IFNAME, NCCL_DEBUG. "
        "Values are masked wherever the run is stored or shown.",
    )
    env_from: list[Annotated[str, Field(pattern=ENV_NAME)]] = Field(
        default_factory=list,
        description="Names of variables copied from the environment of `orchestrator submit` "
        "to every worker: secrets (tokens, passwords) that must not be written in a spec.",
    )
    collective_timeout_s: PositiveInt = Field(
        1800, description="Process-group timeout: a hung collective fails the attempt."
    )
    elastic_resize_check_s: float = Field(
        60, gt=0, description="With resources.workers [min, max]: how often Ray looks for room to "
        "grow a running group; growing restarts it from the last checkpoint."
    )
    worker_start_timeout_s: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="How long Ray Train waits to place the worker group before it counts the "
        "cluster again and retries at the size that fits (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S)"
        ". Default: 3 s for resources.workers [min, max], whose restart after a node loss is "
        "sized for the lost node until Ray sees it gone; Ray's 60 s for a fixed count."
    )
    pending_timeout_s: float = Field(
        900, gt=0, allow_inf_nan=False,
        description="How long the workers may wait for the cluster to place them (at start and "
        "at every restart) before the run fails; the driver says what it waits for every 30 s."
    )

    @model_validator(mode="after")
    def _env_once(self) -> RunSpec:
        both = sorted(set(self.env) & set(self.env_from))
        if both:
            raise ValueError(f"{', '.join(both)} in both env and env_from: keep one")
        return self


class JobSpec(_Strict):
    """One training job: everything ``orchestrator submit`` needs."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    model: ModelSpec
    data: DataSpec
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    solver: SolverSpec
    eval: EvalSpec = Field(default_factory=EvalSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    run: RunSpec = Field(default_factory=RunSpec)
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict,
        description="field path -> values; submit trains every combination as child runs of "
        "one parent run, e.g. {resources.workers: [1, 2], solver.reference_lr: [0.01, 0.02]}.",
    )

    def resolved_yaml(self, *, redact: bool = True) -> str:
        """The spec as it will run (defaults filled, overrides applied), for saving with the
        run: ``run.env`` values and URL credentials masked unless ``redact=False``."""
        data = self.model_dump(mode="json")
        return yaml.safe_dump(redact_spec(data) if redact else data, sort_keys=False)

    def redacted(self) -> dict[str, Any]:
        """``model_dump`` safe to store or show (``orchestrator.secrets.redact_spec``)."""
        return redact_spec(self.model_dump(mode="json"))


def _set_path(raw: dict[str, Any], key: str, value: Any, what: str) -> None:
    """Set ``a.b.c`` in nested dicts, creating missing levels (pydantic judges them after)."""
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"{what}: '{part}' is not a mapping in the spec")
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``4``, ``[a, b]``)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        shown = redact_override(item)  # a run.env value may be a secret
        if not sep or not key.strip():
            raise InputError(f"override '{shown}' is not of the form key.path=value")
        try:  # 'key=' means the empty string, not null
            parsed = load_yaml(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            why = "" if shown != item else f" ({exc})"
            raise InputError(f"override '{shown}': value is not valid YAML{why}") from None
        _set_path(raw, key, parsed, f"override '{shown}'")
    return raw


def expand_sweep(spec: JobSpec) -> list[tuple[dict[str, Any], JobSpec]]:
    """Every combination of ``spec.sweep`` as (assignment, spec without sweep), in order.

    A spec without a sweep expands to itself. Each child is validated like a spec of its own,
    so a bad sweep key or value fails at load time with the combination named.
    """
    if not spec.sweep:
        return [({}, spec)]
    base = spec.model_dump(mode="json")
    base.pop("sweep")
    keys = list(spec.sweep)
    children = []
    for values in itertools.product(*(spec.sweep[k] for k in keys)):
        assignment = dict(zip(keys, values, strict=True))
        raw = copy.deepcopy(base)
        for key, value in assignment.items():
            _set_path(raw, key, value, f"sweep key '{key}'")
        children.append((assignment, parse_spec(raw, source=f"sweep {assignment}")))
    return children


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the model found by walking ``loc`` down from JobSpec (for hints)."""
    model: Any = JobSpec
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)),
                     None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _field_path(error: Any) -> tuple[int | str, ...]:
    """The loc without pydantic's union-member labels (``constrained-int``, ``tuple[...]``);
    an unknown key is the user's own word and is kept whatever it looks like."""
    loc = tuple(error["loc"])
    last = loc[-1:] if error["type"] == "extra_forbidden" else ()
    kept = loc[:-1] if last else loc
    return tuple(p for p in kept
                 if isinstance(p, int) or not any(c in p for c in "-[(")) + last


def _describe(error: Any) -> str:
    """One line per pydantic error: field path, message, and a 'did you mean' for unknown keys."""
    loc = _field_path(error)
    path = ".".join(str(p) for p in loc) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        known = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        message = f"unknown key ({hint})"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif "input" in error and error["type"] != "value_error" and loc[:2] != ("run", "env"):
        message = f"{message} (got {error['input']!r})"  # run.env values may be secrets
    return f"  {path}: {message}"


def parse_spec(raw: Any, *, source: str = "<spec>", overrides: list[str] | None = None) -> JobSpec:
    """Validate an already-loaded YAML document (plus overrides) into a JobSpec."""
    if not isinstance(raw, dict):
        raise InputError(f"{source}: a job spec must be a YAML mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        # A value failing every member of a union yields one error per member: keep the first
        # per field (the plain form, e.g. an int for resources.workers).
        first = {_field_path(e): e for e in reversed(exc.errors())}
        lines = [_describe(e) for e in reversed(first.values())]
        raise InputError(f"{source}: invalid job spec\n" + "\n".join(lines)) from None
    _check_worker_ceiling(spec, source)
    if spec.sweep:
        expand_sweep(spec)  # validates every combination now, not halfway through the sweep
    return spec


def max_workers_ceiling() -> int:
    """``$ORCHESTRATOR_MAX_WORKERS`` or 256: more workers than this is taken for a typo."""
    raw = os.environ.get(MAX_WORKERS_ENV, "")
    try:
        return int(raw) if raw.strip() else DEFAULT_MAX_WORKERS
    except ValueError:
        raise InputError(f"{MAX_WORKERS_ENV}={raw!r} is not an integer") from None


def _check_worker_ceiling(spec: JobSpec, source: str) -> None:
    ceiling = max_workers_ceiling()
    if spec.resources.max_workers > ceiling:
        raise InputError(
            f"{source}: invalid job spec\n  resources.workers: {spec.resources.max_workers} "
            f"workers is more than the ceiling of {ceiling}; set {MAX_WORKERS_ENV} to allow "
            "more")


def load_spec(path: Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a job spec file; errors name the file, line or field."""
    if not path.is_file():
        raise InputError(f"{path}: job spec not found (give a path such as jobs/demo.yaml)")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the job spec: {exc}") from None
    return parse_spec(raw, source=str(path), overrides=overrides)


def find_specs(paths: list[Path]) -> list[Path]:
    """Expand folders to every ``*.yaml``/``*.yml`` below them (recursively), sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml"}))
        else:
            found.append(path)
    return found
