"""The team's servers on this machine: an S3 API server, PostgreSQL and an MLflow server.

What a team runs on real machines (object storage, a tracking database, one MLflow server), each
started here as its own process on 127.0.0.1 and a free port, and stopped by its pid. Used by
``orchestrator team up`` (a rehearsal of the team setup) and by the tests, which exercise the
team path against these real servers rather than mocks.

* S3: moto's ``ThreadedMotoServer`` in a child process (``python -m orchestrator.team.s3``).
* PostgreSQL: the Debian server (``initdb``/``pg_ctl``). It refuses to run as root, so a root
  caller runs it as the ``postgres`` user, in a folder that user owns.
* MLflow: ``mlflow server`` on the PostgreSQL store, artifacts proxied to a bucket.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Server", "free_port", "start_s3", "start_postgres", "start_mlflow", "create_bucket",
           "s3_storage_uri", "S3_ENV", "postgres_bin", "ServerError"]

# moto accepts any key; these are the ones the rehearsal hands out (never real credentials).
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}
REGION = "us-east-1"


# Servers started by this process, by pid: kept so they are reaped when stopped here (a server
# outlives its Popen object on purpose; another process stops it by pid alone).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class ServerError(RuntimeError):
    """A server did not come up; the message names it and where its log is."""


@dataclass(frozen=True, kw_only=True)
class Server:
    """One started server: enough to reach it and to stop it by pid from another process."""

    name: str
    pid: int
    port: int
    url: str
    log: str
    folder: str = ""  # PostgreSQL's data folder (removed on stop when the server made it)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # PostgreSQL runs as another user: it exists
            return True
        return _not_zombie(self.pid)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (PostgreSQL: SIGINT, its fast shutdown), then SIGKILL after ``timeout``."""
        first = signal.SIGINT if self.name == "postgres" else signal.SIGTERM
        _signal(self.pid, first)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.alive():
            _signal(self.pid, signal.SIGKILL)
        child = _CHILDREN.pop(self.pid, None)
        if child is not None:
            child.wait(timeout)
        if self.folder and Path(self.folder).name.startswith("orchestrator-pg-"):
            shutil.rmtree(self.folder, ignore_errors=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Server:
        return cls(**data)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    """The server's whole process group when it leads one (``_spawn``: MLflow's workers too)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None, log: Path, what: str,
               timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"{what} exited with {proc.returncode} at start; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: an error status is still a server
        except OSError:
            time.sleep(0.2)
    raise ServerError(f"{what} did not answer at {url} within {timeout:.0f} s; see {log}")


def _started(proc: subprocess.Popen[bytes], url: str, log: Path, what: str,
             timeout: float) -> None:
    """Wait until ``proc`` answers at ``url``; a server that never does is killed, not left."""
    try:
        _wait_http(url, proc, log, what, timeout)
    except ServerError:
        _signal(proc.pid, signal.SIGKILL)
        _CHILDREN.pop(proc.pid, None)
        proc.wait(10)
        raise


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A server in its own session, so a Ctrl-C at the terminal does not reach it."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return proc


def start_s3(log_dir: Path, *, port: int | None = None, timeout: float = 60,
             env: dict[str, str] | None = None, nice: int = 0) -> Server:
    """moto's S3 API on 127.0.0.1 (any access key is accepted; create buckets first).

    ``env`` adds to the server's environment: ``INITIAL_NO_AUTH_ACTION_COUNT=N`` makes moto
    check credentials (against its IAM users) from the (N+1)th request on. ``nice``: a lower
    CPU priority, for a benchmark where the stand-in for remote storage should not take CPU
    from training on the same machine."""
    port = port or free_port()
    log = Path(log_dir) / f"s3-{port}.log"
    cmd = [sys.executable, "-m", "orchestrator.team.s3", "--port", str(port)]
    proc = _spawn(["nice", "-n", str(nice), *cmd] if nice else cmd, log,
                  {**os.environ, **env} if env else None)
    url = f"http://127.0.0.1:{port}"
    _started(proc, url + "/moto-api/", log, "the S3 server", timeout)
    return Server(name="s3", pid=proc.pid, port=port, url=url, log=str(log))


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                          aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=bucket)


def s3_storage_uri(endpoint: str, bucket: str, prefix: str = "") -> str:
    """``run.storage_path`` for a bucket behind ``endpoint`` in the form pyarrow and Ray read."""
    host = endpoint.split("://", 1)[-1].rstrip("/")
    scheme = endpoint.split("://", 1)[0] if "://" in endpoint else "https"
    path = f"{bucket}/{prefix.strip('/')}" if prefix.strip("/") else bucket
    return f"s3://{path}?endpoint_override={host}&scheme={scheme}&region={REGION}"


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL's bin folder, or one on PATH, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parents[1].name) if Path(p).parents[1].name.isdigit()
                   else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` user there."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _postgres_folder() -> Path:
    """A folder the server's user owns and can reach (pytest's tmp folders are root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="orchestrator-pg-"))
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    return folder


def start_postgres(*, port: int | None = None, database: str = "mlflow",
                   timeout: float = 60) -> Server:
    """A fresh PostgreSQL cluster on 127.0.0.1 (trust auth, user ``postgres``) with one
    database; its folder is temporary and removed when it stops."""
    bindir = postgres_bin()
    if bindir is None:
        raise ServerError("PostgreSQL is not installed (no pg_ctl): install the Debian "
                          "'postgresql' package")
    port = port or free_port()
    folder = _postgres_folder()
    log = folder / "postgres.log"
    data = folder / "data"
    run = lambda cmd: subprocess.run(_as_postgres(cmd), capture_output=True, text=True)  # noqa: E731
    done = run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])
    if done.returncode:
        raise ServerError(f"initdb failed: {done.stderr.strip()[-500:]}")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    done = run([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log),
                "-w", "-t", str(int(timeout)), "start"])
    if done.returncode:
        raise ServerError(f"PostgreSQL did not start: {done.stdout.strip()[-500:]}; see {log}")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    server = Server(name="postgres", pid=pid, port=port, log=str(log), folder=str(folder),
                    url=f"postgresql://postgres@127.0.0.1:{port}/{database}")
    done = run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                "-c", f"create database {database}"])
    if done.returncode:
        server.stop()
        raise ServerError(f"create database {database} failed: {done.stderr.strip()}")
    return server


def start_mlflow(*, backend_uri: str, artifacts_destination: str, s3_endpoint: str | None,
                 log_dir: Path, port: int | None = None, timeout: float = 120,
                 env: dict[str, str] | None = None) -> Server:
    """``mlflow server`` on 127.0.0.1 with proxied artifacts: clients need no S3 settings."""
    port = port or free_port()
    log = Path(log_dir) / f"mlflow-{port}.log"
    server_env = {**os.environ, **S3_ENV, **(env or {})}
    if s3_endpoint:
        server_env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts_destination,
           "--workers", "1"]
    proc = _spawn(cmd, log, server_env)
    url = f"http://127.0.0.1:{port}"
    _started(proc, url + "/health", log, "the MLflow server", timeout)
    return Server(name="mlflow", pid=proc.pid, port=port, url=url, log=str(log))
