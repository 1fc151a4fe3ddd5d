"""``executor: sagemaker``. Moto test: boto3 talks to a moto server on 127.0.0.1 through AWS_ENDPOINT_URL (dummy
credentials); moto completes transform jobs at once without running a container, so the test writes the output
object SageMaker would write (input rows joined with their answers). Stubber tests: moto has no
stop_transform_job and never fails a job."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from infra.sagemaker.aws import Clients
from infra.sagemaker.transform import SageMakerExecutor
from tasks.batch.config import BatchConfig, GenerationSettings, SageMakerExecutorConfig, batch_config
from tasks.batch.executors import Part
from tasks.batch.inputs import BatchRecord
from tasks.batch.parts import BatchError
from tests.infra.sagemaker.conftest import BUCKET, IMAGE, NOW, REGION, ROLE, make_release

PART = Part(3, [BatchRecord("a", 1, (("user", "Reverse: a b"),)), BatchRecord("b", 2, (("user", "Upper: x"),))],
            [[1, 2], [3]])


def answer(text: str, prompt_tokens: int) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 2, "total_tokens": prompt_tokens + 2}}


def executor_config(**fields) -> SageMakerExecutorConfig:
    base = {"region": REGION, "role_arn": ROLE, "image_uri": IMAGE, "bucket": BUCKET, "max_payload_mb": 4,
            "max_concurrent_transforms": 2, "invocations_timeout_s": 300, "invocations_max_retries": 2, "poll_s": 0}
    return SageMakerExecutorConfig(**{**base, **fields})


def test_batch_config_selects_the_sagemaker_executor_from_set_options():
    """``--set executor.type=sagemaker --set executor.bucket=…`` validates; SageMaker's payload limit is kept."""
    config = batch_config(["executor.type=sagemaker", f"executor.bucket={BUCKET}", "executor.model_name=m"])
    assert isinstance(config.executor, SageMakerExecutorConfig)
    with pytest.raises(Exception, match="max_payload_mb × max_concurrent_transforms"):
        batch_config(["executor.type=sagemaker", f"executor.bucket={BUCKET}", "executor.model_name=m",
                      "executor.max_payload_mb=50", "executor.max_concurrent_transforms=3"])


def test_transform_job_parameters_and_joined_output(aws: Clients, tmp_path: Path):
    """Moto on 127.0.0.1: the executor makes a model from the version, uploads the part with its generation
    settings and creates a job with line splitting, multi-record batches, line assembly, the answers joined to
    their input rows, the payload limit and the client config; the joined output becomes one Answer per row."""
    release = make_release(tmp_path / "v4", "4")
    executor = SageMakerExecutor(release, executor_config(), GenerationSettings(max_new_tokens=12), aws)
    executor.run_id = "run1"
    base = "slmops/transform/run1/part-00003"
    joined = [{"id": "a", "messages": [], "SageMakerOutput": answer("b a", 5)},
              {"id": "b", "messages": [], "SageMakerOutput": answer("X", 4)}]
    aws.s3.put_object(Bucket=BUCKET, Key=f"{base}/output/input.jsonl.out",
                      Body="".join(json.dumps(r) + "\n" for r in joined).encode())
    done = []

    answers = executor.run(PART, done.append)

    job = aws.sagemaker.describe_transform_job(TransformJobName="slmops-demo-slm-run1-p3")
    assert job["ModelName"] == executor.model
    assert (job["BatchStrategy"], job["MaxPayloadInMB"], job["MaxConcurrentTransforms"]) == ("MultiRecord", 4, 2)
    assert job["ModelClientConfig"] == {"InvocationsTimeoutInSeconds": 300, "InvocationsMaxRetries": 2}
    assert job["TransformInput"] == {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                                     "S3Uri": f"s3://{BUCKET}/{base}/input/"}},
                                     "ContentType": "application/jsonlines", "SplitType": "Line"}
    assert job["TransformOutput"] == {"S3OutputPath": f"s3://{BUCKET}/{base}/output/",
                                      "Accept": "application/jsonlines", "AssembleWith": "Line"}
    assert job["DataProcessing"]["JoinSource"] == "Input"
    assert job["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 1}
    sent = aws.s3.get_object(Bucket=BUCKET, Key=f"{base}/input/input.jsonl")["Body"].read().decode().splitlines()
    assert [json.loads(line) for line in sent] == [
        {"id": "a", "messages": [{"role": "user", "content": "Reverse: a b"}], "max_tokens": 12, "temperature": 0.0},
        {"id": "b", "messages": [{"role": "user", "content": "Upper: x"}], "max_tokens": 12, "temperature": 0.0}]
    assert [(a.id, a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens) for a in answers] == \
        [("a", "b a", "stop", 5, 2), ("b", "X", "stop", 4, 2)]
    assert done == [2]
    executor.close()
    assert aws.sagemaker.list_models()["Models"] == []  # the model it made is gone; the artifact stays


def job_reply(status: str, reason: str = "") -> dict:
    return {"TransformJobName": "j", "TransformJobArn": "arn:aws:sagemaker:us-east-1:1:transform-job/j",
            "TransformJobStatus": status, "FailureReason": reason, "ModelName": "m",
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/i"}}},
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1}, "CreationTime": NOW,
            "TransformStartTime": NOW, "TransformEndTime": NOW + dt.timedelta(minutes=6)}


def stubbed_running_job(aws: Clients, stubbed, tmp_path: Path) -> SageMakerExecutor:
    """An executor on the stubbed client whose job is created and then reported InProgress once."""
    aws.sagemaker = stubbed.client
    executor = SageMakerExecutor(make_release(tmp_path / "v1", "1"), executor_config(model_name="m"),
                                 GenerationSettings(), aws)
    stubbed.add_response("create_transform_job", {"TransformJobArn": "arn:aws:sagemaker:us-east-1:1:transform-job/j"})
    stubbed.add_response("describe_transform_job", job_reply("InProgress"))
    return executor


def test_cancellation_stops_the_job(aws: Clients, stubbed, tmp_path: Path):
    """Stubber (stop_transform_job): an interruption while the job runs (a cancelled flow, Ctrl-C) stops it."""
    executor = stubbed_running_job(aws, stubbed, tmp_path)
    stubbed.add_response("stop_transform_job", {}, {"TransformJobName": "slmops-demo-slm-" + executor.run_id + "-p3"})

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    executor.sleep = interrupted
    with pytest.raises(KeyboardInterrupt):
        executor.run(PART, lambda n: None)


def test_failed_job_surfaces_its_reason(aws: Clients, stubbed, tmp_path: Path):
    """Stubber: InProgress → Failed with a FailureReason → a BatchError carrying it; the cost is still counted."""
    executor = stubbed_running_job(aws, stubbed, tmp_path)
    stubbed.add_response("describe_transform_job", job_reply("Failed", "ClientError: See job logs for more "
                                                             "information (/invocations returned 400)"))

    with pytest.raises(BatchError, match=r"failed: ClientError: See job logs .*returned 400"):
        executor.run(PART, lambda n: None)

    assert executor.usage == {"jobs": 1, "instance_hours": 0.1, "cost_usd": 0.0115}  # 6 min of ml.m5.large


def test_batch_flow_opens_the_registered_executor():
    """flows.batch registers ``sagemaker`` with make_executor (tasks know no cloud)."""
    import flows.batch  # noqa: F401
    from tasks.batch.opening import OPENERS

    assert OPENERS["sagemaker"].__module__ == "infra.sagemaker.transform"
    assert isinstance(BatchConfig().executor.type, str)
