"""The slmops commands on a sagemaker deployment: boto3 talks to a moto server on 127.0.0.1 through
AWS_ENDPOINT_URL (dummy credentials); the async invocation's runtime client is botocore-stubbed, because moto
answers invoke_endpoint_async with an output location in a bucket that does not exist."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber

from flows.cli import main
from infra.sagemaker.aws import Clients
from infra.targets.sagemaker import SageMakerTarget
from tests.infra.sagemaker.conftest import BUCKET, REGION, target


def test_status_shows_cost_and_errors_are_one_line(aws: Clients, releases, home: Path,
                                                   capsys: pytest.CaptureFixture):
    """status lists the endpoint with its cost per hour; a DeployError prints as one ``error:`` line, exit 2;
    undeploy removes it."""
    target(home, aws).deploy(releases[0])
    try:
        assert main(["status", "--target", "sagemaker"]) == 0
        out = capsys.readouterr().out
        assert "sagemaker demo-slm" in out and "cost: $0.115/hour" in out

        assert main(["deploy-rollback", "demo-slm", "--target", "sagemaker"]) == 2
        err = capsys.readouterr().err
        assert err == "error: sagemaker deployment 'demo-slm' has no previous version to roll back to\n"
    finally:
        assert main(["undeploy", "demo-slm", "--target", "sagemaker"]) == 0
    assert aws.sagemaker.list_endpoints()["Endpoints"] == []


def test_invoke_async_writes_the_input_to_s3_and_prints_the_result(aws: Clients, releases, home: Path,
                                                                   monkeypatch, capsys: pytest.CaptureFixture):
    """``slmops invoke --async``: the request goes to S3, invoke_endpoint_async (stubbed) names the output, the
    result object is read back and its answer printed."""
    target(home, aws, async_output=f"s3://{BUCKET}/slmops/async-output").deploy(releases[0])
    result = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "c b a"}, "finish_reason": "stop"}]}
    aws.s3.put_object(Bucket=BUCKET, Key="slmops/async-output/r1.out", Body=json.dumps(result).encode())
    runtime = boto3.client("sagemaker-runtime", region_name=REGION)
    stub = Stubber(runtime)
    stub.add_response("invoke_endpoint_async", {"OutputLocation": f"s3://{BUCKET}/slmops/async-output/r1.out",
                                                "InferenceId": "r1"},
                      {"EndpointName": "demo", "ContentType": "application/json", "Accept": "application/json",
                       "InputLocation": ANY})
    try:
        with stub, monkeypatch.context() as patch:
            patch.setattr(SageMakerTarget, "clients", lambda self, region=None: _with_runtime(runtime))
            assert main(["invoke", "demo-slm", "--target", "sagemaker", "--prompt", "Reverse: a b c", "--async"]) == 0
        assert capsys.readouterr().out == "c b a\n"
        inputs = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="slmops/async-input/")["Contents"]
        sent = json.loads(aws.s3.get_object(Bucket=BUCKET, Key=inputs[0]["Key"])["Body"].read())
        assert sent["messages"] == [{"role": "user", "content": "Reverse: a b c"}]
    finally:
        assert main(["undeploy", "demo-slm", "--target", "sagemaker"]) == 0


def _with_runtime(runtime) -> Clients:
    clients = Clients(REGION)
    clients.runtime = runtime
    return clients
