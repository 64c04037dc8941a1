"""Cached files that heal: a record of each file's size and digest, written last, and a file
lock that serializes whoever builds a cache entry.

A crash, a full disk or a killed process can leave a cache entry truncated or half-written;
a later run that trusts it fails the same way every time (an ``EOFError`` from a cut pickle,
say). Every cache writes its files first and this record last, and every reader checks the
files against the record (sizes always; checksums of files changed since); whatever does not
match is rebuilt (the callers warn when they do).
Pure standard library: the synthetic data generator, the dataset cache and the driver use it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["digest", "file_record", "locked", "record_problem", "write_record",
           "read_record"]


def digest(path: Path) -> str:
    """blake2b of the file's bytes (about 1 GB/s: cheap next to what the caches save)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def file_record(root: Path, names: Iterable[str], *,
                times: bool = True) -> dict[str, dict[str, Any]]:
    """Size, digest and (unless ``times`` is false: a record that must be byte-reproducible)
    modification time of each file ``root/name``, as written now."""
    record = {}
    for name in names:
        stat = (root / name).stat()
        record[name] = {"size": stat.st_size, "blake2b": digest(root / name)}
        if times:
            record[name]["mtime_ns"] = stat.st_mtime_ns
    return record


def record_problem(root: Path, record: Any) -> str | None:
    """Why the files under ``root`` are not the ones ``record`` describes (None if they are):
    the first file missing, of another size, or with other bytes.

    Sizes are compared on every use; checksums where a file's modification time is not the
    one recorded (every write changes it) or none was, so an untouched multi-GB cache costs a
    ``stat`` per file, not a read."""
    if not isinstance(record, dict) or not record:
        return "no record of its files (an unfinished write)"
    touched = []
    for name, expected in sorted(record.items()):
        try:
            stat = (root / name).stat()
        except OSError:
            return f"{name} is missing"
        if not isinstance(expected, dict) or stat.st_size != expected.get("size"):
            return f"{name} has {stat.st_size} bytes, not the {expected.get('size')} written"
        if stat.st_mtime_ns != expected.get("mtime_ns"):
            touched.append((name, expected))
    for name, expected in touched:
        if digest(root / name) != expected.get("blake2b"):
            return f"{name} is not the file written (checksum differs)"
    return None


def write_record(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as json to a temporary file, flushed to disk, then rename it into
    place: the record exists only whole, and only after the files it describes."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(json.dumps(document, sort_keys=True))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def read_record(path: Path) -> dict[str, Any] | None:
    """The json document at ``path``; None when it is absent, cut or garbled."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed): processes on one machine
    (or sharing a file system that supports it) take turns. The lock goes with the process,
    so a killed holder never blocks the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
