"""Can the job keep its checkpoints in ``run.storage_path`` on S3? Asked once, before Ray starts.

Ray Train finds out only when the first checkpoint is uploaded (a missing bucket failed after
~23 s inside Ray, a refused key later still). Here the driver asks the S3 server directly
through ``pyarrow.fs``, the library Ray itself writes with: list the prefix, look up the
bucket, write then delete a small object under the prefix, with short timeouts and no retries.
What comes back is a sentence saying what is wrong and how to fix it, or None.

pyarrow takes credentials from the URI (``s3://KEY:SECRET@bucket/prefix?...``) or, as usual for
AWS clients, from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (``run.env_from`` hands them
to the workers), a profile, or the machine's role.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["S3Location", "parse_s3_uri", "probe_s3", "split_credentials"]

# What a URI's query may set for the probe (the rest is checked by pyarrow, and ignored here).
_PROBED_OPTIONS = ("region", "scheme", "endpoint_override")
# Credentials pyarrow would find without the URI (it also asks the machine's instance role).
_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ROLE_ARN")
_REFUSED = ("INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN",
            "INVALID_CLIENT_TOKEN_ID", "InvalidAccessKeyId", "SignatureDoesNotMatch")
_HOW_TO_CREDENTIALS = ("export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and name them in "
                       "run.env_from so every worker gets them)")


@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3://`` storage path: where it is and how pyarrow is to reach it."""

    bucket: str
    prefix: str
    options: dict[str, Any] = field(default_factory=dict)  # S3FileSystem keyword arguments

    @property
    def endpoint(self) -> str:
        host = self.options.get("endpoint_override") or "AWS S3"
        return f"{self.options.get('scheme', 'https')}://{host}" if "://" not in host else host

    @property
    def has_credentials(self) -> bool:
        """Whether pyarrow finds credentials other than the machine's instance role."""
        if self.options.get("access_key") or any(os.environ.get(v) for v in _CREDENTIAL_VARS):
            return True
        shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
        return Path(shared).expanduser().is_file()


def parse_s3_uri(uri: str) -> S3Location:
    """The bucket, prefix and pyarrow options of ``uri``; ValueError saying what pyarrow
    refuses in it (checked without network: the region lookup is skipped for the check)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "s3" or not parts.hostname:
        raise ValueError("expected s3://BUCKET/PREFIX")
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    options: dict[str, Any] = {k: query[k] for k in _PROBED_OPTIONS if k in query}
    if parts.username is not None:
        options["access_key"] = urllib.parse.unquote(parts.username)
        options["secret_key"] = urllib.parse.unquote(parts.password or "")
    _check_with_pyarrow(uri, query)
    return S3Location(bucket=parts.hostname, prefix=parts.path.strip("/"), options=options)


def _check_with_pyarrow(uri: str, query: dict[str, str]) -> None:
    """pyarrow's own parse (unknown parameters, bad values). Without a region it would look the
    bucket's region up on AWS, so a placeholder region stands in for that check."""
    from pyarrow.fs import FileSystem

    if "region" not in query:
        uri += ("&" if "?" in uri else "?") + "region=us-east-1"
    try:
        FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow.lib.ArrowInvalid and others: all say what is wrong
        hint = (" (pyarrow takes credentials only in the URI as s3 KEY:SECRET@BUCKET/... or from "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)" if "_key" in str(exc)
                or "token" in str(exc) else "")
        raise ValueError(f"pyarrow cannot use it: {_strip(str(exc))}{hint}") from None


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """``s3://KEY:SECRET@bucket/p?q`` -> (``s3://bucket/p?q``, the AWS_* variables for them),
    so that a job sent to a cluster carries the key in its environment, not in its files."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "s3" or parts.username is None:
        return uri, {}
    env = {"AWS_ACCESS_KEY_ID": urllib.parse.unquote(parts.username),
           "AWS_SECRET_ACCESS_KEY": urllib.parse.unquote(parts.password or "")}
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), env


def _strip(message: str) -> str:
    """pyarrow's message without the AWS request id (noise in a one-line error)."""
    return re.sub(r"\s*\(Request ID: [^)]*\)", "", message).strip()


def _filesystem(location: S3Location, timeout: float) -> Any:
    from pyarrow.fs import AwsStandardS3RetryStrategy, S3FileSystem

    return S3FileSystem(**location.options, connect_timeout=min(2.0, timeout / 2),
                        request_timeout=timeout / 2,
                        retry_strategy=AwsStandardS3RetryStrategy(max_attempts=1))


def _steps(location: S3Location, timeout: float) -> str | None:
    """List the prefix, look the bucket up, write and delete a probe object: the first
    failure, as a sentence, or None."""
    from pyarrow.fs import FileSelector, FileType

    fs = _filesystem(location, timeout)
    where = f"{location.bucket}/{location.prefix}".rstrip("/")
    try:
        fs.get_file_info(FileSelector(where, allow_not_found=True))
    except OSError as exc:
        return _classify(location, str(exc), "list")
    try:  # a listing may find a missing bucket merely empty; HeadBucket tells
        if fs.get_file_info(location.bucket).type == FileType.NotFound:
            return _missing_bucket(location)
    except OSError:
        pass  # not allowed to ask (it may list it, though): the write below tells the rest
    probe = f"{where}/.orchestrator-probe-{uuid.uuid4().hex[:12]}"
    try:
        with fs.open_output_stream(probe) as out:
            out.write(b"orchestrator pre-flight: may be deleted\n")
        fs.delete_file(probe)
    except OSError as exc:
        return _classify(location, str(exc), "write")
    return None


def _missing_bucket(location: S3Location) -> str:
    return (f"bucket '{location.bucket}' does not exist at {location.endpoint}; create it "
            f"first (aws s3 mb s3://{location.bucket}), Ray does not create buckets")


def _classify(location: S3Location, message: str, doing: str) -> str:
    """pyarrow's 'AWS Error CODE during OPERATION' as what the user should do."""
    detail = _strip(message)
    if "NETWORK_CONNECTION" in message or "curlCode" in message:
        return (f"no S3 server answers at {location.endpoint} ({detail}); check "
                "endpoint_override and scheme in the URI, and that the server is up")
    if "NO_SUCH_BUCKET" in message or "NoSuchBucket" in message:
        return _missing_bucket(location)
    if not location.has_credentials:
        return (f"no S3 credentials are set and {location.endpoint} refuses anonymous "
                f"access ({detail}); {_HOW_TO_CREDENTIALS}")
    if any(code in message for code in _REFUSED):
        return (f"{location.endpoint} refuses the S3 credentials ({detail}); check the "
                f"access key and secret: {_HOW_TO_CREDENTIALS}")
    if doing == "write":
        return (f"cannot write under s3://{location.bucket}/{location.prefix} ({detail}); "
                "Ray uploads the checkpoints there: grant s3:PutObject and s3:DeleteObject "
                "on the prefix, or choose a prefix these credentials may write")
    return (f"cannot list s3://{location.bucket}/{location.prefix} ({detail}); grant "
            "s3:ListBucket on the bucket to these credentials")


def probe_s3(uri: str, *, timeout: float) -> str | None:
    """What keeps ``uri`` from holding checkpoints, or None. Gives up after ``timeout``
    seconds in all (the probe runs in a thread that is then left behind)."""
    try:
        location = parse_s3_uri(uri)
    except ValueError as exc:
        return str(exc)
    answer: list[str | None] = []
    thread = threading.Thread(target=lambda: answer.append(_steps(location, timeout)),
                              name="s3-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not answer:
        return (f"the S3 server at {location.endpoint} did not answer within {timeout:g} s; "
                "check endpoint_override and scheme in the URI, and that the server is up")
    return answer[0]
