"""Pre-flight of S3 storage and of the tracking server's artifact store, against real servers:
each problem is refused with exit 2 within 5 s, naming the field, before Ray starts and before
the MLflow run exists."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import InputError
from orchestrator.launch.preflight import (
    PROBE_TIMEOUT_S,
    Context,
    check_tracking_artifacts,
    run_checks,
)
from orchestrator.launch.prepared import prepare
from orchestrator.spec import load_spec
from orchestrator.team.servers import (
    REGION,
    Server,
    create_bucket,
    free_port,
    s3_storage_uri,
    start_mlflow,
    start_s3,
)
from tests.conftest import TINY_JOB, write_spec
from tests.launch.s3_auth import start_guarded_s3
from tests.launch.test_preflight import runs_in, store  # noqa: F401 (a fixture)

runner = CliRunner()
@pytest.fixture(scope="module")
def guarded_s3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Server, dict[str, str]]:
    """An S3 server that checks credentials, and the keys of a user that may read its bucket
    but not write to it."""
    server, users = start_guarded_s3(tmp_path_factory.mktemp("s3-auth"))
    yield server, users["reader"]
    server.stop()


def _no_credentials(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(workdir / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(workdir / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role here


def _refused(workdir: Path, store_db: Path, *overrides: str) -> str:
    """Submit the tiny job with ``overrides``: exit 2, no run, no Ray; the launch checks
    refuse it within 5 s (timed apart from the CLI, which a loaded machine slows)."""
    shutil.copy(store_db, workdir / "mlflow.db")
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = runner.invoke(app, ["submit", str(job), *overrides])
    assert result.exit_code == 2, result.output
    assert runs_in(workdir / "mlflow.db") == []
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    _refused_within(job, *overrides)
    return " ".join(result.output.split())


def _refused_within(job: Path, *overrides: str) -> None:
    prepared = prepare(load_spec(job, list(overrides)))
    started = time.monotonic()
    with pytest.raises(InputError):
        run_checks(prepared, "launch")
    elapsed = time.monotonic() - started
    assert elapsed < PROBE_TIMEOUT_S, f"{elapsed:.1f} s"


def test_s3_endpoint_unreachable(workdir: Path, store: Path, s3_env: dict) -> None:  # noqa: F811
    uri = s3_storage_uri(f"http://127.0.0.1:{free_port()}", "bucket", "ckpt")
    out = _refused(workdir, store, f"run.storage_path={uri}")
    assert "run.storage_path: s3://bucket/ckpt" in out and "no S3 server answers" in out


def test_s3_bucket_missing(workdir: Path, store: Path, s3_server: Server,  # noqa: F811
                           s3_env: dict) -> None:
    uri = s3_storage_uri(s3_server.url, "no-such-bucket", "ckpt")
    out = _refused(workdir, store, f"run.storage_path={uri}")
    assert "run.storage_path:" in out
    assert "bucket 'no-such-bucket' does not exist" in out and "aws s3 mb" in out


def test_s3_credentials_missing(workdir: Path, store: Path, guarded_s3: tuple,  # noqa: F811
                                monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, workdir)
    uri = s3_storage_uri(guarded_s3[0].url, "guarded", "ckpt")
    out = _refused(workdir, store, f"run.storage_path={uri}")
    assert "run.storage_path:" in out and "no S3 credentials are set" in out
    assert "run.env_from" in out


def test_s3_credentials_refused(workdir: Path, store: Path, guarded_s3: tuple,  # noqa: F811
                                monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, workdir)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret-it-knows")
    uri = s3_storage_uri(guarded_s3[0].url, "guarded", "ckpt")
    out = _refused(workdir, store, f"run.storage_path={uri}")
    assert "run.storage_path:" in out and "refuses the S3 credentials" in out
    assert "INVALID_ACCESS_KEY_ID" in out


def test_s3_credentials_in_the_uri_refused_and_masked(
        workdir: Path, store: Path, guarded_s3: tuple,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, workdir)
    endpoint = guarded_s3[0].url.removeprefix("http://")
    uri = (f"s3://AKIAUNKNOWNKEY000000:uri%2Fhush@guarded/ckpt?endpoint_override={endpoint}"
           f"&scheme=http&region={REGION}")
    out = _refused(workdir, store, f"run.storage_path={uri}")
    assert "refuses the S3 credentials" in out and "s3://****@guarded/ckpt" in out
    assert "hush" not in out and "AKIAUNKNOWNKEY000000" not in out


def test_s3_storage_not_writable(workdir: Path, store: Path, guarded_s3: tuple,  # noqa: F811
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _no_credentials(monkeypatch, workdir)
    for name, value in guarded_s3[1].items():
        monkeypatch.setenv(name, value)
    uri = s3_storage_uri(guarded_s3[0].url, "guarded", "ckpt")
    out = _refused(workdir, store, f"run.storage_path={uri}")
    assert "run.storage_path:" in out and "cannot write under s3://guarded/ckpt" in out
    assert "ACCESS_DENIED" in out


def test_usable_s3_storage_passes_and_leaves_nothing(s3_server: Server, s3_bucket: str) -> None:
    from orchestrator.launch.storage_probe import probe_s3

    assert probe_s3(s3_storage_uri(s3_server.url, s3_bucket, "ckpt"), timeout=5) is None
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name=REGION)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys == ["ckpt/"], keys  # the probe object is gone (pyarrow keeps the folder marker)


def test_a_parameter_pyarrow_refuses_is_named(workdir: Path, store: Path,  # noqa: F811
                                              s3_server: Server, s3_env: dict) -> None:
    uri = s3_storage_uri(s3_server.url, "bucket", "ckpt") + "&secret_key=abc"
    out = _refused(workdir, store, f"run.storage_path={uri}")
    assert "Unexpected query parameter" in out and "KEY:SECRET@BUCKET" in out
    assert "abc" not in out


@pytest.fixture(scope="module")
def tracking_without_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Server, int]:
    """An MLflow server proxying artifacts to an S3 endpoint where nothing listens (yet):
    the server and the endpoint's port."""
    folder = tmp_path_factory.mktemp("mlflow-no-store")
    port = free_port()
    server = start_mlflow(backend_uri=f"sqlite:///{folder / 'mlflow.db'}",
                          artifacts_destination="s3://gone/mlflow",
                          s3_endpoint=f"http://127.0.0.1:{port}", log_dir=folder)
    yield server, port
    server.stop()


def test_tracking_server_up_but_its_artifact_store_down(
        workdir: Path, tracking_without_store: tuple[Server, int], tmp_path: Path) -> None:
    server, port = tracking_without_store
    job = write_spec(workdir / "tiny.yaml", TINY_JOB)
    result = runner.invoke(app, ["submit", str(job), f"tracking.tracking_uri={server.url}"])
    out = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    _refused_within(job, f"tracking.tracking_uri={server.url}")
    assert "tracking.tracking_uri:" in out and "its artifact store does not" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments) == []
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()

    # The store comes up at its endpoint: the same server now passes.
    s3_store = start_s3(tmp_path, port=port)
    try:
        create_bucket(s3_store.url, "gone")
        check_tracking_artifacts(Context(prepare(load_spec(
            job, [f"tracking.tracking_uri={server.url}"]))))
    finally:
        s3_store.stop()


def test_validate_and_dry_run_stay_offline(workdir: Path, tracking_without_store: tuple) -> None:
    """Neither the S3 nor the artifact-store probe runs on validate or --dry-run."""
    dead = s3_storage_uri(f"http://127.0.0.1:{free_port()}", "bucket", "ckpt")
    url = tracking_without_store[0].url
    job = write_spec(workdir / "tiny.yaml", TINY_JOB.replace(
        "tracking: {log_period: 2}", f"tracking: {{log_period: 2, tracking_uri: '{url}'}}")
        + f"run: {{storage_path: '{dead}'}}\n")
    for command in (["validate", str(job)], ["submit", str(job), "--dry-run"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["submit", str(job)]).exit_code == 2  # a real submit probes
