"""SageMaker fixtures: AWS is a moto server on 127.0.0.1 (the shared ``s3_bucket`` fixture, reached through
``AWS_ENDPOINT_URL`` with dummy credentials), and botocore's Stubber for the calls moto lacks."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.stub import Stubber

from infra.sagemaker.aws import Clients
from infra.targets.config import SageMakerConfig
from infra.targets.sagemaker import SageMakerTarget
from tasks.records import ModelRelease

ROLE = "arn:aws:iam::123456789012:role/slmops-sagemaker-execution"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/slmops-serve:1"
BUCKET = "batch"  # made by the s3_bucket fixture
REGION = "us-east-1"
NOW = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def no_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and region, whatever the machine has, so nothing could sign a real request."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def aws(s3_bucket, no_real_aws) -> Clients:
    """Clients of the moto server (boto3 reads AWS_ENDPOINT_URL=http://127.0.0.1:PORT).

    Moto keeps its state per process, not per server: resources of earlier tests are reset first.
    """
    url = os.environ["AWS_ENDPOINT_URL"]
    assert url.startswith("http://127.0.0.1:")
    httpx.post(f"{url}/moto-api/reset").raise_for_status()
    s3_bucket.create_bucket(Bucket=BUCKET)
    clients = Clients(REGION)
    assert clients.sagemaker.meta.endpoint_url == url
    return clients


def make_release(folder: Path, version: str, name: str = "demo-slm") -> ModelRelease:
    """A small stand-in of an onnxruntime-genai folder (moto never runs it), different bytes per version."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "genai_config.json").write_text(json.dumps({"model": {"context_length": 64, "eos_token_id": 2}}))
    (folder / "model.onnx").write_bytes(f"weights of version {version}".encode())
    return ModelRelease(name=name, version=version, onnx_dir=str(folder))


@pytest.fixture
def releases(tmp_path: Path) -> list[ModelRelease]:
    """Versions 1 and 2 of demo-slm."""
    return [make_release(tmp_path / f"v{v}", v) for v in ("1", "2")]


def config(**fields: Any) -> SageMakerConfig:
    """A deployable config: role, bucket, image, endpoint name; smoke test off (moto answers canned bodies)."""
    base = {"region": REGION, "role_arn": ROLE, "bucket": BUCKET, "image_uri": IMAGE, "endpoint_name": "demo",
            "smoke_test": False, "poll_s": 0}
    return SageMakerConfig(**{**base, **fields})


def target(root: Path, clients: Clients, **fields: Any) -> SageMakerTarget:
    """The target on ``clients`` with a fake clock (each sleep advances it)."""
    t = SageMakerTarget(config(**fields), root, clients)
    clock = {"t": 0.0}
    t.clock = lambda: clock["t"]
    t.sleep = lambda s: clock.__setitem__("t", clock["t"] + s)
    return t


@pytest.fixture
def stubbed(aws: Clients) -> Iterator[Stubber]:
    """A botocore-stubbed sagemaker client; a test swaps it in with ``aws.sagemaker = stubbed.client`` (the other
    clients stay on moto)."""
    client = boto3.client("sagemaker", region_name=REGION)
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()


def endpoint_reply(status: str, config: str, reason: str | None = None, name: str = "demo") -> dict[str, Any]:
    """A DescribeEndpoint response."""
    reply = {"EndpointName": name, "EndpointArn": f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{name}",
             "EndpointConfigName": config, "EndpointStatus": status, "CreationTime": NOW, "LastModifiedTime": NOW}
    if reason is not None:
        reply["FailureReason"] = reason
    return reply


def not_found(stub: Stubber, method: str, what: str) -> None:
    """SageMaker's answer for a missing resource (a ValidationException 'Could not find …')."""
    stub.add_client_error(method, service_error_code="ValidationException",
                          service_message=f"Could not find {what}.", http_status_code=400)
