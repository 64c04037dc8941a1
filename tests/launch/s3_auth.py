"""An S3 server that checks credentials (moto with IAM checks on), for tests of what a real
object store refuses: one bucket, a user that may only read it and one that may write it."""

from __future__ import annotations

import json
from pathlib import Path

import boto3

from orchestrator.team.servers import REGION, S3_ENV, Server, create_bucket, start_s3

BUCKET = "guarded"
_READ = ["s3:GetObject", "s3:ListBucket"]
_USERS = {"reader": _READ, "writer": ["s3:*"]}
# Requests moto serves before it checks credentials: exactly the setup below.
_SETUP_REQUESTS = 3 * len(_USERS) + 1


def start_guarded_s3(folder: Path) -> tuple[Server, dict[str, dict[str, str]]]:
    """The server and, per user (``reader``, ``writer``), the AWS_* variables that sign in
    as it."""
    server = start_s3(folder, env={"INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_REQUESTS)})
    iam = boto3.client("iam", endpoint_url=server.url, region_name=REGION,
                       aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
    users = {}
    for name, actions in _USERS.items():
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": actions, "Resource": "*"}]}
        iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
        users[name] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                       "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    create_bucket(server.url, BUCKET)
    return server, users
