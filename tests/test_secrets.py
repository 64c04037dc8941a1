"""Secrets masked wherever a run is stored or shown; run files private to their owner."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import InputError
from orchestrator.launch.remote import for_cluster
from orchestrator.secrets import (
    MASK,
    make_private,
    private_files,
    redact_override,
    redact_spec,
    redact_urls,
    worker_env,
)
from orchestrator.spec import parse_spec
from tests.conftest import TINY_JOB

runner = CliRunner()


@pytest.mark.parametrize(("text", "shown"), [
    ("http://alice:pw@host:5000/x", "http://****@host:5000/x"),
    ("postgresql+psycopg2://u:p@db/mlflow", "postgresql+psycopg2://****@db/mlflow"),
    ("https://token@example.com/model.pth", "https://****@example.com/model.pth"),
    ("see http://a:b@h and s3://bucket/x@y", "see http://****@h and s3://bucket/x@y"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("mail bob@example.com", "mail bob@example.com"),
    # S3: a secret key may hold a raw '/'; query-parameter credentials (s3fs and others)
    ("s3://AKIA1:wJal/K7+x@bkt/ckpt?endpoint_override=h:9000&scheme=http",
     "s3://****@bkt/ckpt?endpoint_override=h:9000&scheme=http"),
    ("s3://bkt/p?region=eu&secret_key=a/b&access_key=AK&session_token=T",
     "s3://bkt/p?region=eu&secret_key=****&access_key=****&session_token=****"),
    ("s3://bkt/a:b and http://host:5000/x", "s3://bkt/a:b and http://host:5000/x"),
])
def test_url_credentials_are_masked(text: str, shown: str) -> None:
    assert redact_urls(text) == shown


def _spec(*overrides: str):  # type: ignore[no-untyped-def]
    return parse_spec(yaml.safe_load(TINY_JOB), overrides=list(overrides))


def test_spec_dump_masks_env_values_and_uri_credentials_keeping_keys() -> None:
    spec = _spec("run.env={TOKEN: abc123, NCCL_DEBUG: INFO}", "run.env_from=[OTHER]",
                 "tracking.tracking_uri=http://u:pw@h:5000",
                 "sweep={run.env.TOKEN: [s1, s2], solver.reference_lr: [0.01]}")
    dumped = redact_spec(spec.model_dump(mode="json"))
    assert dumped["run"]["env"] == {"TOKEN": MASK, "NCCL_DEBUG": MASK}
    assert dumped["run"]["env_from"] == ["OTHER"]
    assert dumped["tracking"]["tracking_uri"] == "http://****@h:5000"
    assert dumped["sweep"] == {"run.env.TOKEN": [MASK, MASK], "solver.reference_lr": [0.01]}
    text = spec.resolved_yaml()
    for secret in ("abc123", "INFO", "pw", "s1", "s2"):
        assert secret not in text.replace("TOKEN", "").replace("NCCL_DEBUG", "")
    assert spec.run.env["TOKEN"] == "abc123"  # the spec itself keeps the real values


def test_override_echoes_mask_env_values() -> None:
    assert redact_override("run.env.TOKEN=abc") == f"run.env.TOKEN={MASK}"
    assert redact_override("solver.max_iter=5") == "solver.max_iter=5"
    with pytest.raises(InputError) as caught:
        _spec("run.env.TOKEN=[unclosed-secret")
    assert "unclosed-secret" not in str(caught.value) and "run.env.TOKEN" in str(caught.value)
    with pytest.raises(InputError) as caught:
        _spec("run.env={TOKEN: [nested-secret]}")
    assert "nested-secret" not in str(caught.value) and "run.env.TOKEN" in str(caught.value)


def test_env_from_copies_named_variables_and_refuses_missing_ones() -> None:
    env = worker_env({"A": "1"}, ["B"], environ={"B": "2", "C": "3"})
    assert env == {"A": "1", "B": "2"}
    with pytest.raises(InputError, match="run.env_from: MISSING_X not set"):
        worker_env({}, ["MISSING_X"], environ={})
    with pytest.raises(InputError, match="in both env and env_from"):
        _spec("run.env={A: 1}", "run.env_from=[A]")
    with pytest.raises(InputError, match="run.env_from"):
        _spec("run.env_from=['not a name']")


def test_cluster_upload_names_secrets_and_carries_values_in_the_job_env(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_ENV_X", "env-secret")
    spec = _spec("run.env={A: spec-secret}", "run.env_from=[FROM_ENV_X]",
                 "tracking.tracking_uri=http://u:uri-secret@h:5000")
    uploaded, env = for_cluster(spec)
    assert env == {"A": "spec-secret", "FROM_ENV_X": "env-secret",
                   "MLFLOW_TRACKING_URI": "http://u:uri-secret@h:5000"}
    text = uploaded.resolved_yaml(redact=False)
    for secret in ("spec-secret", "env-secret", "uri-secret"):
        assert secret not in text
    assert uploaded.run.env == {"A": MASK} and uploaded.run.env_from == ["FROM_ENV_X"]
    assert uploaded.tracking.tracking_uri is None


def test_cluster_upload_carries_s3_keys_in_the_job_env_only() -> None:
    storage = "s3://AKIA1:se%2Fcret-s3@bkt/ckpt?endpoint_override=h:9000&scheme=http"
    uploaded, env = for_cluster(_spec(f"run.storage_path={storage}"))
    assert env == {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "se/cret-s3"}
    assert uploaded.run.storage_path == "s3://bkt/ckpt?endpoint_override=h:9000&scheme=http"
    assert "cret-s3" not in uploaded.resolved_yaml(redact=False)


def test_spec_dump_masks_s3_keys_in_the_storage_path() -> None:
    storage = "s3://AKIA1:s3-secret@bkt/ckpt?endpoint_override=127.0.0.1:9&scheme=http"
    spec = _spec(f"run.storage_path={storage}")
    dumped = redact_spec(spec.model_dump(mode="json"))
    assert dumped["run"]["storage_path"] == ("s3://****@bkt/ckpt?endpoint_override=127.0.0.1:9"
                                             "&scheme=http")
    assert "s3-secret" not in spec.resolved_yaml() and "AKIA1" not in spec.resolved_yaml()
    assert spec.run.storage_path == storage  # workers get it as given


def test_dry_run_prints_no_secret(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "tiny.yaml").write_text(TINY_JOB, encoding="utf-8")
    monkeypatch.setenv("FROM_ENV_Y", "env-secret")
    result = runner.invoke(app, ["submit", "tiny.yaml", "--dry-run", "run.env={A: spec-secret}",
                                 "run.env_from=[FROM_ENV_Y]",
                                 "tracking.tracking_uri=http://u:uri-secret@h:5000"])
    assert result.exit_code == 0, result.output
    for secret in ("spec-secret", "env-secret", "uri-secret"):
        assert secret not in result.output
    missing = runner.invoke(app, ["submit", "tiny.yaml", "--dry-run",
                                  "run.env_from=[NOT_SET_ANYWHERE]"])
    assert missing.exit_code == 2 and "NOT_SET_ANYWHERE not set" in missing.output


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_private_files_and_make_private(tmp_path: Path) -> None:
    before = _umask()
    with private_files():
        (tmp_path / "new.db").write_text("x", encoding="utf-8")
        (tmp_path / "newdir").mkdir()
    assert stat.S_IMODE((tmp_path / "new.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "newdir").stat().st_mode) == 0o700
    old = tmp_path / "old.db"
    old.write_text("x", encoding="utf-8")
    old.chmod(0o644)
    make_private(old, tmp_path / "absent")
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert _umask() == before  # the process's mask is back after the block
