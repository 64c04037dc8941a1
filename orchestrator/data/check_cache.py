"""The data check's result, reused while the dataset it was computed from is unchanged.

At COCO size the check reads a 450 MB json and 118k image headers; a second submit, a resume
and every child of a sweep would repeat that for the same answer. ``cached_check`` keys the
report by what it depends on -- the json's bytes (SHA-256), the names, sizes and modification
times of the files under the image folder, both paths (they appear in the report), the check's
settings, the code of the check and Pillow's version -- so any change among those checks
again. Entries live in ``.orchestrator/checks/`` of the working directory (``memo``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import PIL

from orchestrator.data import check, coco_stream, memo
from orchestrator.data.check import CheckReport, Progress, check_dataset

__all__ = ["CHECK_VERSION", "cache_folder", "check_key", "cached_check"]

CHECK_VERSION = 1  # bump when what the check finds changes outside the files hashed below
Note = Callable[[str], None]


def cache_folder(workdir: Path) -> Path:
    """Where a working directory keeps its check results (next to its runs and datasets)."""
    return Path(workdir) / ".orchestrator" / "checks"


def _code_digest() -> str:
    """The check's own source: an edit to a rule is a new version even if nobody bumps it."""
    digest = hashlib.sha256()
    for module in (check, coco_stream):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()


def check_key(json_file: Path, image_root: Path, *, decode: bool) -> str:
    """The entry name for checking ``json_file`` against ``image_root`` as they are now.

    Raises:
        OSError: a file cannot be read; the check itself then says what is wrong.
    """
    return memo.entry_key("check", {
        "version": CHECK_VERSION, "code": _code_digest(), "pillow": PIL.__version__,
        "decode": decode, "json_file": str(json_file), "image_root": str(image_root),
        "json_sha256": memo.file_digest(json_file),
        "images": memo.tree_fingerprint(image_root) if Path(image_root).is_dir() else None,
    })


def cached_check(json_file: Path, image_root: Path, *, cache: Path | None,
                 workers: int | None = None, progress: Progress | None = None,
                 decode: bool = False, note: Note | None = None,
                 reuse: bool = True) -> CheckReport:
    """``check_dataset``, or the report it gave for exactly these files before.

    Args:
        cache: folder of the entries (``cache_folder(workdir)``); None checks afresh.
        note: told when a stored report is reused, and when one is damaged (then the
            dataset is checked again and the entry rewritten).
        reuse: False checks again whatever is stored, and stores the new report.
    """
    json_file, image_root = Path(json_file), Path(image_root)
    if cache is None:
        return check_dataset(json_file, image_root, workers=workers, progress=progress,
                             decode=decode)
    try:
        key = check_key(json_file, image_root, decode=decode)
    except OSError:  # missing or unreadable: check_dataset says so as an InputError
        return check_dataset(json_file, image_root, workers=workers, progress=progress,
                             decode=decode)
    stored, problem = memo.load_entry(cache, key) if reuse else (None, None)
    if stored is not None:
        try:
            report = CheckReport.from_dict(stored)
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"{cache / key} does not hold a check report ({exc!r})"
        else:
            _tell(note, f"data check: {json_file.name} and its images are unchanged since "
                        "the last check: reusing its result")
            return report
    if problem is not None:
        _tell(note, f"note: {problem}; checking the data again")
    report = check_dataset(json_file, image_root, workers=workers, progress=progress,
                           decode=decode)
    try:
        if check_key(json_file, image_root, decode=decode) == key:  # none changed meanwhile
            memo.store_entry(cache, key, report.to_dict())
    except OSError as exc:  # a cache that cannot be written costs time, not the check
        _tell(note, f"note: cannot store the data check's result in {cache} ({exc}); the "
                    "next run checks again")
    return report


def _tell(note: Note | None, message: str) -> None:
    if note is not None:
        note(message)
