"""The team servers start on 127.0.0.1, work together, and stop by pid."""

from __future__ import annotations

import boto3
import psutil
from mlflow import MlflowClient

from orchestrator.team.servers import REGION, S3_ENV


def _listening_hosts(pid: int) -> set[str]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    hosts = set()
    for proc in procs:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                hosts.add(conn.laddr.ip)
    return hosts


def test_team_servers_listen_on_loopback_only(s3_server, postgres_server, team_tracking):
    for server in (s3_server, postgres_server, team_tracking):
        assert server.alive(), server
        assert _listening_hosts(server.pid) == {"127.0.0.1"}, server


def test_artifacts_go_through_the_server_into_the_bucket(team_tracking, s3_server, tmp_path):
    client = MlflowClient(team_tracking.url)
    run = client.create_run(client.create_experiment("team-artifacts"))
    (tmp_path / "note.txt").write_text("checkpoint stand-in")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.log_metric(run.info.run_id, "loss", 0.5, step=3)
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name=REGION,
                      aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="team-mlflow")["Contents"]]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys), keys
    assert client.get_metric_history(run.info.run_id, "loss")[0].step == 3


def test_stop_ends_the_process(tmp_path):
    from orchestrator.team.servers import start_s3

    server = start_s3(tmp_path)
    assert server.alive()
    server.stop()
    assert not server.alive()


def test_s3_server_at_a_lower_cpu_priority(tmp_path):
    from orchestrator.team.servers import create_bucket, start_s3

    server = start_s3(tmp_path, nice=5)
    try:
        assert psutil.Process(server.pid).nice() == psutil.Process().nice() + 5
        create_bucket(server.url, "niced-bucket")  # it serves
    finally:
        server.stop()
    assert not server.alive()
