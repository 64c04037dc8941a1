"""Results computed from big files, kept on disk under a key made of what they depend on.

The pre-flight reads a 450 MB json and 118k image headers to say what is wrong with a dataset
that, on a second submit, a resume or the next child of a sweep, has not changed. Here its
result is stored under a key that hashes the json's bytes, the names, sizes and modification
times of the files under the image folder, and the check's settings and version; any change
gives another key, hence a fresh check.

An entry is one file: the result as JSON, then a line with the SHA-256 of the bytes before
it. It is written to a temporary file and renamed into place, so a reader sees a whole entry
or none; one that is damaged anyway (truncated, garbled, a wrong checksum) is reported and
computed again, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["file_digest", "tree_fingerprint", "entry_key", "load_entry", "store_entry"]

_digests: dict[tuple[Any, ...], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (about 2 GB/s here).

    Kept for this process under the file's identity and times (inode, size, mtime, ctime:
    any write changes ctime), so a submit that reads one json three times hashes it once.
    """
    st = os.stat(path)
    ident = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
             st.st_ctime_ns)
    if ident not in _digests:
        with open(path, "rb") as f:
            _digests[ident] = hashlib.file_digest(f, "sha256").hexdigest()
    return _digests[ident]


def tree_fingerprint(folder: Path) -> str:
    """Hash of the relative name, size and modification time of every file under ``folder``
    (links followed, as the image reader follows them); no file is opened."""
    digest = hashlib.sha256()
    _fingerprint(Path(folder), "", digest, set())
    return digest.hexdigest()


def _fingerprint(folder: Path, prefix: str, digest: Any, seen: set[tuple[int, int]]) -> None:
    """One folder's lines ("name NUL size NUL mtime", sorted), then its subfolders'."""
    try:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:  # a link back up the tree
            digest.update(f"{prefix}\0loop\n".encode())
            return
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError as exc:
        digest.update(f"{prefix}\0{type(exc).__name__}\n".encode())
        return
    lines, folders = [], []
    for entry in entries:
        try:
            if entry.is_dir():
                folders.append(entry.name)
                continue
            st = entry.stat()
            lines.append(f"{prefix}{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n")
        except OSError as exc:  # a dangling link: the check reports it missing
            lines.append(f"{prefix}{entry.name}\0{type(exc).__name__}\n")
    lines.sort()
    digest.update("".join(lines).encode("utf-8", "surrogateescape"))
    for name in sorted(folders):
        _fingerprint(folder / name, f"{prefix}{name}/", digest, seen)


def entry_key(kind: str, parts: dict[str, Any]) -> str:
    """File name of the entry for ``parts`` (JSON-serialisable), e.g. ``check-<sha256>``."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return f"{kind}-{hashlib.sha256(canonical.encode()).hexdigest()[:40]}"


def load_entry(folder: Path, key: str) -> tuple[Any, str | None]:
    """(stored value, None); (None, None) when there is no entry; (None, why) when the entry
    cannot be verified -- the caller computes the value again and says so."""
    path = Path(folder) / key
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read {path} ({exc.strerror or exc})"
    body, _, checksum = raw.rstrip(b"\n").rpartition(b"\n")
    if not body or checksum != hashlib.sha256(body).hexdigest().encode():
        return None, f"{path} is damaged (its checksum does not match: truncated or garbled)"
    try:
        return json.loads(body), None
    except ValueError as exc:
        return None, f"{path} is damaged ({exc})"


def store_entry(folder: Path, key: str, value: Any) -> None:
    """Write the entry atomically (temporary file, then ``os.replace``) in a folder only this
    user can read: a planted entry would make a broken dataset pass."""
    folder = Path(folder)
    _private_folder(folder)
    body = json.dumps(value, separators=(",", ":")).encode()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n")
        os.replace(tmp, folder / key)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _private_folder(folder: Path) -> None:
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
