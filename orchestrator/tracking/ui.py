"""``orchestrator ui``: the MLflow UI over the project's store, on this machine only.

One ``mlflow server`` worker on 127.0.0.1 (ready in ~10 s, ~550 MB, FACTS section 7), with the
same sqlite store and ``./mlruns`` artifact root that ``submit`` and ``runs import`` write.
Its log goes beside them too, in ``.orchestrator/ui-<port>.log`` (not the temporary folder,
which the system clears and where nobody looks).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import InputError, JobFailedError
from orchestrator.tracking.run import _artifact_root

__all__ = ["UiServer", "start_ui", "ui_log_path", "compare_url", "port_is_free"]


@dataclass
class UiServer:
    """A running ``mlflow server`` child process; ``stop()`` it in a ``finally``."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll ``/health`` until it answers; fail early (with the log) if the server died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise JobFailedError(f"mlflow server exited with {self.process.returncode}:\n"
                                     f"{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise JobFailedError(f"mlflow server at {self.url} not ready after {timeout:.0f}s:\n"
                             f"{self._log_tail()}")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the server's process group (``mlflow`` runs uvicorn as a child), SIGKILL
        what is left after ``grace`` seconds; safe to call twice."""
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._signal(0) and time.monotonic() < deadline:
            self.process.poll()  # reap the leader so only live members count
            time.sleep(0.2)
        self._signal(signal.SIGKILL)
        self.process.wait()

    def _signal(self, signum: int) -> bool:
        """Signal the group; False once no member is left."""
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ui_log_path(tracking_uri: str, port: int) -> Path:
    """``.orchestrator/ui-<port>.log`` beside a sqlite store's database (where its artifacts
    are), else in the working folder."""
    home = (Path(tracking_uri.removeprefix("sqlite:///")).parent
            if tracking_uri.startswith("sqlite:///") else Path.cwd())
    return (home / ".orchestrator" / f"ui-{port}.log").resolve()


def start_ui(tracking_uri: str, *, port: int = 5000, host: str = "127.0.0.1",
             log_path: Path | None = None) -> UiServer:
    """Start ``mlflow server`` from this environment on ``host:port``; does not wait."""
    if not port_is_free(host, port):
        raise InputError(f"port {port} on {host} is in use (another `orchestrator ui`?); "
                         "pass --port with a free one")
    mlflow = Path(sys.executable).parent / "mlflow"
    if not mlflow.exists():
        raise InputError(f"{mlflow} not found: install mlflow into this environment (make env)")
    artifacts = _artifact_root(tracking_uri) or (Path.cwd() / "mlruns").resolve().as_uri()
    log_path = log_path or ui_log_path(tracking_uri, port)
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    command = [str(mlflow), "server", "--workers", "1", "--host", host, "--port", str(port),
               "--backend-store-uri", tracking_uri, "--default-artifact-root", artifacts]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return UiServer(process=process, url=f"http://{host}:{port}", log_path=log_path)


def compare_url(base_url: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    """The UI's run-comparison page (a single-page-app route after ``#``)."""
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids),
                                    "experiments": json.dumps(sorted(set(experiment_ids)))})
    return f"{base_url}/#/compare-runs?{query}"
