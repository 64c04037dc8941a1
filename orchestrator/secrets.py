"""What must not leak from a run: secret values and the files that hold run data.

Workers get ``run.env`` (and ``run.env_from``) values and credentialed URIs as they are; what
we store or show (MLflow params, tags and ``job.yaml``, the printed plan and messages, our
logs) gets a masked copy instead: keys kept, values replaced by :data:`MASK`. Files that hold
run data (the sqlite store, its artifacts, ``.orchestrator/``) are made private to the user.

Pure Python: the spec loader and ``validate`` import it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError

__all__ = [
    "MASK",
    "ENV_NAME",
    "redact_urls",
    "redact_spec",
    "redact_assignment",
    "redact_override",
    "worker_env",
    "private_files",
    "make_private",
]

MASK = "****"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# scheme://userinfo@ : the userinfo (user, user:password, or a token) is the credential. A
# password may hold a raw '/' (S3 secret keys often do: s3://KEY:SECRET@bucket), so after a
# colon anything up to the '@' is masked; before it, a '/' means a path, not a user.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
                       r"(?P<userinfo>[^/@:\s'\"]+(?::[^@\s'\"]*)?|:[^@\s'\"]*)@")
# Credentials as query parameters (s3fs/fsspec and other S3 clients read these).
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:access_key|secret_key|session_token|"
                           r"aws_access_key_id|aws_secret_access_key|aws_session_token)=)"
                           r"(?P<value>[^&#\s'\"]*)", re.IGNORECASE)
_ENV_KEYS = ("run.env",)


def redact_urls(text: str) -> str:
    """Mask the credentials of every URL in ``text`` (``http://u:p@h`` -> ``http://****@h``,
    ``s3://b/p?secret_key=s`` -> ``s3://b/p?secret_key=****``)."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)


def _redact_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {key: _redact_tree(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return [_redact_tree(value) for value in tree]
    return redact_urls(tree) if isinstance(tree, str) else tree


def _is_env_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in _ENV_KEYS)


def _mask_values(value: Any) -> Any:
    """``run.env`` itself (a mapping: keep keys) or one of its values (mask it)."""
    if isinstance(value, dict):
        return dict.fromkeys(value, MASK)
    return MASK


def redact_assignment(assignment: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep assignment (``{field.path: value}``) safe to show or store."""
    return {key: _mask_values(value) if _is_env_key(key) else _redact_tree(value)
            for key, value in assignment.items()}


def redact_override(override: str) -> str:
    """A ``key.path=value`` override as messages may show it (a ``run.env`` value masked)."""
    key, sep, _ = override.partition("=")
    if sep and _is_env_key(key.strip()):
        return f"{key}={MASK}"
    return redact_urls(override)


def redact_spec(data: Mapping[str, Any]) -> dict[str, Any]:
    """A ``JobSpec.model_dump(mode="json")`` with ``run.env`` values and URL credentials
    masked, sweeps over ``run.env`` included."""
    out = _redact_tree(dict(data))
    run = out.get("run")
    if isinstance(run, dict) and isinstance(run.get("env"), dict):
        run["env"] = _mask_values(run["env"])
    sweep = out.get("sweep")
    if isinstance(sweep, dict):
        out["sweep"] = {key: [_mask_values(v) for v in values] if _is_env_key(key) else values
                        for key, values in sweep.items()}
    return out


def worker_env(env: Mapping[str, str], env_from: list[str],
               environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every worker gets: ``run.env`` plus the ``run.env_from`` names copied
    from this process's environment (so a secret never has to be written into a spec)."""
    environ = os.environ if environ is None else environ
    missing = [name for name in env_from if name not in environ]
    if missing:
        raise InputError(f"run.env_from: {', '.join(missing)} not set in the environment of "
                         "this command; export it first (its value is never stored)")
    return {**{name: environ[name] for name in env_from}, **env}


@contextmanager
def private_files() -> Iterator[None]:
    """Files and folders created inside (by us, MLflow, and the Ray processes started here,
    which inherit the mask) are readable by their owner only."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def make_private(*paths: Path) -> None:
    """Take group/other permissions off existing run files we own (made before
    ``private_files`` existed, or by another tool); a folder's mode guards what is inside."""
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            continue
        if info.st_uid != os.getuid() or not info.st_mode & 0o077:
            continue
        path.chmod(stat.S_IMODE(info.st_mode) & 0o700)
