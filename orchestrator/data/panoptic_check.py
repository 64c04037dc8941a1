"""Pre-flight of a panoptic dataset on the driver: check it, then make sure its stuff maps exist.

A panoptic dataset is three files that must agree: the COCO instances json (thing polygons),
the COCO panoptic json and its segment PNGs. A PNG segment without a json entry (or the
reverse), an unknown category or a PNG sized unlike its image trains silently wrong or fails
hours in; here they exit 2 before Ray starts, each problem naming the file and segment.

Then the separated stuff maps the semantic head trains on are derived where missing
(``panoptic.write_semantic_maps``: new files only, each written atomically; the dataset's own
files are never touched). Where ``sem_seg_root`` cannot be written (a read-only dataset
without its maps), they go to a folder of the run's data cache instead, and the resolved
dataset names that folder.

Pure numpy + Pillow; a passed check is remembered under the json's digest and the PNG folder's
fingerprint (``memo``), so an unchanged dataset is read once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.data import memo
from orchestrator.data.panoptic import (
    DeriveResult,
    PanopticProblem,
    check_panoptic,
    panoptic_index,
    write_semantic_maps,
)
from orchestrator.errors import InputError

if TYPE_CHECKING:
    from orchestrator.data.catalog import ResolvedDataset

__all__ = ["CHECK_VERSION", "agreement_problems", "panoptic_problems", "check_dataset",
           "stuff_maps_root", "derive_stuff_maps", "prepare_panoptic"]

logger = logging.getLogger(__name__)

CHECK_VERSION = 1  # bump when the check finds more: remembered passes are then redone
MAX_SHOWN = 10  # problems listed in the message; the count says how many more


def _instances_top(json_file: Path) -> dict[str, Any]:
    """The instances json's images and categories (annotations streamed past, not kept)."""
    from orchestrator.data.check import open_coco

    return open_coco(json_file).top


def agreement_problems(ds: ResolvedDataset) -> list[PanopticProblem]:
    """The instances json and the panoptic json must describe the same images, and the
    instances' categories must be the panoptic thing categories (same ids and names):
    registration pairs them by image id and takes the class names from the panoptic json."""
    assert ds.panoptic_json is not None
    top = _instances_top(Path(ds.json_file))
    index = panoptic_index(Path(ds.panoptic_json))
    name = str(ds.panoptic_json)
    problems = []
    instance_ids = {image["id"] for image in top["images"]}
    for ident in sorted(instance_ids - set(index.file_names), key=str)[:MAX_SHOWN]:
        problems.append(PanopticProblem(name, None, f"image_id {ident} of {ds.json_file} has "
                                        "no panoptic annotation"))
    for ident in sorted(set(index.file_names) - instance_ids, key=str)[:MAX_SHOWN]:
        problems.append(PanopticProblem(name, None, f"image_id {ident} is not in the images "
                                        f"of {ds.json_file}"))
    return problems + _category_problems(name, index.categories, top["categories"],
                                         ds.json_file)


def _category_problems(name: str, panoptic: list[dict[str, Any]],
                       instances: list[dict[str, Any]], json_file: str) -> list[PanopticProblem]:
    """Thing categories (id -> name) of the panoptic json against the instances json's."""
    things = {c["id"]: c["name"] for c in panoptic if c["isthing"]}
    ours = {c["id"]: c["name"] for c in instances}
    differ = sorted((i for i in things.keys() | ours.keys() if things.get(i) != ours.get(i)),
                    key=str)
    return [PanopticProblem(name, None, f"thing category {i} is {things.get(i)!r} here but "
                            f"{ours.get(i)!r} in {json_file} (None: missing)")
            for i in differ[:MAX_SHOWN]]


def panoptic_problems(ds: ResolvedDataset) -> list[PanopticProblem]:
    """Everything wrong with a panoptic dataset (empty when nothing)."""
    assert ds.panoptic_json is not None and ds.panoptic_root is not None
    return (check_panoptic(Path(ds.panoptic_json), Path(ds.panoptic_root))
            + agreement_problems(ds))


def _located(ds: ResolvedDataset, problem: PanopticProblem) -> PanopticProblem:
    """The problem with its file as a full path: a PNG under ``panoptic_root``."""
    if problem.file.endswith(".png"):
        return replace(problem, file=str(Path(ds.panoptic_root or "") / problem.file))
    return problem


def _message(ds: ResolvedDataset, field: str, problems: list[PanopticProblem]) -> str:
    shown = "\n".join(f"  {_located(ds, p)}" for p in problems[:MAX_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    return (f"{field}: panoptic data check failed ({len(problems)} problem(s) in "
            f"{ds.panoptic_json} and {ds.panoptic_root}):\n{shown}{more}\n"
            "fix the panoptic json (segments_info: exactly one entry per segment id in the "
            "PNG, category_id among the categories, image ids and sizes as in the images) or "
            "export the PNGs again, so that both agree")


def _check_key(ds: ResolvedDataset) -> str:
    assert ds.panoptic_json is not None and ds.panoptic_root is not None
    return memo.entry_key("panoptic", {
        "version": CHECK_VERSION, "panoptic_json": memo.file_digest(Path(ds.panoptic_json)),
        "instances_json": memo.file_digest(Path(ds.json_file)),
        "pngs": memo.tree_fingerprint(Path(ds.panoptic_root))})


def check_dataset(ds: ResolvedDataset, field: str, *, checks: Path | None = None) -> None:
    """Raise InputError (exit 2) listing every problem; a pass is kept in ``checks``."""
    key = None
    if checks is not None:
        with contextlib.suppress(OSError):  # unreadable: the check itself says so
            key = _check_key(ds)
    if key is not None and checks is not None and memo.load_entry(checks, key)[0] == "ok":
        return
    problems = panoptic_problems(ds)
    if problems:
        raise InputError(_message(ds, field, problems))
    if key is not None and checks is not None:
        memo.store_entry(checks, key, "ok")


def _writable(folder: Path) -> bool:
    """Can ``folder`` be created and written to (tried for real: root passes os.access on a
    read-only file system)?"""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return False
    try:
        with tempfile.TemporaryFile(dir=existing):
            return True
    except OSError:
        return False


def _complete(ds: ResolvedDataset, folder: Path) -> bool:
    """Is every image's stuff map in ``folder``?"""
    names = panoptic_index(Path(str(ds.panoptic_json))).file_names.values()
    return all((folder / name).is_file() for name in names)


def stuff_maps_root(ds: ResolvedDataset, cache_root: Path) -> Path:
    """Where the stuff maps are (or will be derived): ``sem_seg_root`` when every map is
    there or it can be written, else a folder of the data cache named after the dataset."""
    assert ds.panoptic_json is not None and ds.sem_seg_root is not None
    wanted = Path(ds.sem_seg_root)
    if _writable(wanted) or _complete(ds, wanted):
        return wanted
    ident = hashlib.sha256(f"{ds.panoptic_json}\0{ds.panoptic_root}".encode()).hexdigest()
    return cache_root / "stuff-maps" / ident[:16]


def derive_stuff_maps(ds: ResolvedDataset, cache_root: Path) -> tuple[ResolvedDataset,
                                                                       DeriveResult]:
    """Write the missing stuff maps; the dataset returned names where they are."""
    assert ds.panoptic_json is not None and ds.panoptic_root is not None
    root = stuff_maps_root(ds, cache_root)
    if _complete(ds, root):  # the usual case: no need to load every segment of the json
        done = len(panoptic_index(Path(ds.panoptic_json)).file_names)
        return replace(ds, sem_seg_root=str(root)), DeriveResult(written=0, skipped=done)
    result = write_semantic_maps(Path(ds.panoptic_json), Path(ds.panoptic_root), root)
    return replace(ds, sem_seg_root=str(root)), result


def prepare_panoptic(ds: ResolvedDataset, field: str, *, cache_root: Path,
                     checks: Path | None = None) -> ResolvedDataset:
    """Check a panoptic dataset whose files are here and derive its missing stuff maps."""
    check_dataset(ds, field, checks=checks)
    ready, result = derive_stuff_maps(ds, cache_root)
    if result.written:
        where = "" if ready.sem_seg_root == ds.sem_seg_root else \
            f" ({ds.sem_seg_root} cannot be written: into the data cache)"
        logger.warning("%s: derived %d stuff map(s) from the panoptic PNGs into %s%s",
                       field, result.written, ready.sem_seg_root, where)
    return ready
