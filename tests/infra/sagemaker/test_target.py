"""The sagemaker target. Moto tests: boto3 talks to a moto server on 127.0.0.1 through AWS_ENDPOINT_URL (dummy
credentials). Stubber tests: moto has no update_endpoint, so the sagemaker client is botocore-stubbed (S3,
CloudWatch and autoscaling stay on moto) and the waiter runs on a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.stub import ANY

from infra.sagemaker.aws import Clients, package_model
from infra.targets import DeployError
from infra.targets.sagemaker import model_digest
from tasks.engine.settings import EngineConfig, engine_env, engine_from_env
from tests.infra.sagemaker.conftest import BUCKET, IMAGE, NOW, ROLE, endpoint_reply, not_found, target


def scaling_of(aws: Clients) -> tuple[list[dict], list[dict]]:
    kw = {"ServiceNamespace": "sagemaker"}
    return (aws.autoscaling.describe_scalable_targets(**kw)["ScalableTargets"],
            aws.autoscaling.describe_scaling_policies(**kw)["ScalingPolicies"])


def test_create_reaches_in_service_with_alarms_autoscaling_and_cost(aws: Clients, releases, tmp_path: Path):
    """Moto on 127.0.0.1: a new endpoint is created, InService on the requested config, smoke test skipped."""
    t = target(tmp_path, aws)

    deployment = t.deploy(releases[0])

    d = t.details(deployment)
    described = aws.sagemaker.describe_endpoint(EndpointName="demo")
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "demo-v1-d1")
    variant = aws.sagemaker.describe_endpoint_config(EndpointConfigName="demo-v1-d1")["ProductionVariants"][0]
    assert variant == {**variant, "VariantName": "AllTraffic", "InstanceType": "ml.m5.large",
                       "InitialInstanceCount": 1, "ModelName": d.model_name}
    container = aws.sagemaker.describe_model(ModelName=d.model_name)["PrimaryContainer"]
    assert container["Image"] == IMAGE
    assert container["Environment"] == {"SLMOPS_SERVED_NAME": "demo-slm", "SLMOPS_SERVED_VERSION": "1",
                                        **engine_env(EngineConfig())}
    assert d.model_name == model_of(releases[0])
    digest = package_model(releases[0].onnx_dir)[1]
    assert container["ModelDataUrl"] == d.model_data == f"s3://{BUCKET}/slmops/models/demo-slm/{digest}/model.tar.gz"
    alarms = {a["AlarmName"]: a["MetricName"] for a in aws.cloudwatch.describe_alarms()["MetricAlarms"]}
    assert alarms == {"demo-AllTraffic-5xx": "Invocation5XXErrors", "demo-AllTraffic-latency": "ModelLatency"}
    targets, policies = scaling_of(aws)
    assert [(x["ResourceId"], x["MinCapacity"], x["MaxCapacity"]) for x in targets] == \
        [("endpoint/demo/variant/AllTraffic", 1, 4)]
    spec = policies[0]["TargetTrackingScalingPolicyConfiguration"]
    assert spec["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert (d.smoke_test, d.cost_per_hour) == ("skipped", 0.115)
    status = t.status("demo-slm")
    assert (status.state, status.served_version, status.cost_per_hour) == ("up", "1", 0.115)


def test_engine_settings_reach_the_container_and_name_a_new_model(aws: Clients, releases, tmp_path: Path):
    """Moto on 127.0.0.1: the target's engine settings are the container's SLMOPS_ENGINE_* environment, which the
    image's server reads back; other settings make another model (a name per artifact and environment)."""
    engine = EngineConfig(max_batch_size=4, scheduler="batches", threads=2)
    t = target(tmp_path, aws, engine=engine.model_dump())
    d = t.details(t.deploy(releases[0]))
    environment = aws.sagemaker.describe_model(ModelName=d.model_name)["PrimaryContainer"]["Environment"]
    assert environment["SLMOPS_ENGINE_MAX_BATCH_SIZE"] == "4" and engine_from_env(environment) == engine
    assert d.model_name == model_of(releases[0], engine) != model_of(releases[0])


def test_same_artifact_is_not_uploaded_twice(aws: Clients, releases, tmp_path: Path):
    """Moto on 127.0.0.1: the artifact key carries the digest; a later deploy of the same bytes finds the object
    (undeploy keeps artifacts) and does not upload again."""
    t = target(tmp_path, aws)
    first = t.details(t.deploy(releases[0]))
    key = first.model_data.removeprefix(f"s3://{BUCKET}/")
    etag = aws.s3.head_object(Bucket=BUCKET, Key=key)["LastModified"]
    t.undeploy("demo-slm")

    second = t.details(t.deploy(releases[0]))

    assert second.model_data == first.model_data
    assert aws.s3.head_object(Bucket=BUCKET, Key=key)["LastModified"] == etag
    assert len(aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="slmops/models/")["Contents"]) == 1


def test_smoke_test_refuses_a_canned_answer_and_removes_the_new_endpoint(aws: Clients, releases, tmp_path: Path):
    """Moto on 127.0.0.1 answers invoke_endpoint with a canned body, which is no chat completion: the deploy fails
    its golden prompt and leaves no endpoint, config, model or alarm behind."""
    t = target(tmp_path, aws, smoke_test=True)

    with pytest.raises(DeployError, match="failed its smoke test: .*not a chat completion.*new endpoint was deleted"):
        t.deploy(releases[0])

    assert aws.sagemaker.list_endpoints()["Endpoints"] == []
    assert aws.sagemaker.list_endpoint_configs()["EndpointConfigs"] == []
    assert aws.sagemaker.list_models()["Models"] == []
    assert aws.cloudwatch.describe_alarms()["MetricAlarms"] == []
    assert t.store.load("demo-slm") is None


def test_serverless_config(aws: Clients, releases, tmp_path: Path):
    """Moto on 127.0.0.1: serverless memory and concurrency; no instances, so no alarms, autoscaling or cost."""
    t = target(tmp_path, aws, serverless_memory_mb=2048, serverless_max_concurrency=7)

    d = t.details(t.deploy(releases[0]))

    variant = aws.sagemaker.describe_endpoint_config(EndpointConfigName=d.config_name)["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 7}
    assert "InstanceType" not in variant
    assert (d.alarms, d.scaling, d.cost_per_hour) == ([], None, None)
    assert scaling_of(aws) == ([], [])


def test_async_config_with_capture_scales_from_zero_and_undeploy_leaves_nothing(aws: Clients, releases,
                                                                               tmp_path: Path):
    """Moto on 127.0.0.1: async output/failure paths, data capture, min-0 autoscaling with a backlog policy and a
    step policy on HasBacklogWithoutCapacity; undeploy then removes every resource the deploy made."""
    t = target(tmp_path, aws, async_output=f"s3://{BUCKET}/slmops/async-output",
               async_failure=f"s3://{BUCKET}/slmops/async-failure", capture_percent=20)

    d = t.details(t.deploy(releases[0]))

    described = aws.sagemaker.describe_endpoint_config(EndpointConfigName=d.config_name)
    assert described["AsyncInferenceConfig"]["OutputConfig"] == {
        "S3OutputPath": f"s3://{BUCKET}/slmops/async-output", "S3FailurePath": f"s3://{BUCKET}/slmops/async-failure"}
    assert described["DataCaptureConfig"]["InitialSamplingPercentage"] == 20
    assert described["DataCaptureConfig"]["DestinationS3Uri"] == f"s3://{BUCKET}/slmops/capture"
    targets, policies = scaling_of(aws)
    assert [(x["MinCapacity"], x["MaxCapacity"]) for x in targets] == [(0, 4)]
    kinds = {p["PolicyName"]: p["PolicyType"] for p in policies}
    assert kinds == {"demo-scaling": "TargetTrackingScaling", "demo-from-zero": "StepScaling"}
    backlog = next(p for p in policies if p["PolicyType"] == "TargetTrackingScaling")
    assert backlog["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]["MetricName"] == \
        "ApproximateBacklogSizePerInstance"
    alarms = {a["AlarmName"] for a in aws.cloudwatch.describe_alarms()["MetricAlarms"]}
    assert "demo-backlog-without-capacity" in alarms

    t.undeploy("demo-slm")

    assert aws.sagemaker.list_endpoints()["Endpoints"] == []
    assert aws.sagemaker.list_endpoint_configs()["EndpointConfigs"] == []
    assert aws.sagemaker.list_models()["Models"] == []
    assert aws.cloudwatch.describe_alarms()["MetricAlarms"] == []
    assert scaling_of(aws) == ([], [])
    assert t.status("demo-slm") is None


def test_deploy_needs_role_bucket_and_image(aws: Clients, releases, tmp_path: Path):
    """No AWS call is made when the config cannot deploy."""
    t = target(tmp_path, aws, role_arn=None, image_uri=None)
    with pytest.raises(DeployError, match="needs role_arn, image_uri"):
        t.deploy(releases[0])


# --- stubbed sagemaker client (moto lacks update_endpoint) --------------------------------------------------


def deploy_v1_on_moto(aws: Clients, releases, tmp_path: Path, **fields):
    t = target(tmp_path, aws, **fields)
    d1 = t.details(t.deploy(releases[0]))
    return t, d1


def expect_update_start(aws: Clients, stub, d1, model2: str) -> None:
    """Swap the stubbed client in; expect a deploy of version 2's calls up to update_endpoint."""
    aws.sagemaker = stub.client
    stub.add_response("describe_endpoint", endpoint_reply("InService", d1.config_name), {"EndpointName": "demo"})
    not_found(stub, "describe_model", f"model {model2}")
    stub.add_response("create_model", {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{model2}"})
    stub.add_response("create_endpoint_config",
                      {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/demo-v2-d2"})


def model_of(release, engine: EngineConfig | None = None) -> str:
    digest = model_digest(package_model(release.onnx_dir)[1], engine_env(engine or EngineConfig()))
    return f"demo-v{release.version}-{digest}"


def test_update_is_a_guarded_canary_and_retires_the_old_config(aws: Clients, stubbed, releases, tmp_path: Path):
    """Stubber (update_endpoint): canary 10% with bake time and auto-rollback on the deploy's alarms, variant
    properties retained; success only on InService with the new config; the old config and model go after."""
    t, d1 = deploy_v1_on_moto(aws, releases, tmp_path, canary_percent=10, bake_s=120)
    expect_update_start(aws, stubbed, d1, model_of(releases[1]))
    stubbed.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/demo"}, {
        "EndpointName": "demo", "EndpointConfigName": "demo-v2-d2", "RetainAllVariantProperties": True,
        "ExcludeRetainedVariantProperties": [{"VariantPropertyType": "DataCaptureConfig"}],
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": 120,
                                                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}},
                "TerminationWaitInSeconds": 0, "MaximumExecutionTimeoutInSeconds": 3600},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "demo-AllTraffic-5xx"},
                                                     {"AlarmName": "demo-AllTraffic-latency"}]}}})
    stubbed.add_response("describe_endpoint", endpoint_reply("Updating", "demo-v1-d1"))
    stubbed.add_response("describe_endpoint", endpoint_reply("InService", "demo-v2-d2"))
    stubbed.add_response("describe_endpoint_config", {
        "EndpointConfigName": "demo-v1-d1", "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:1:endpoint-config/x",
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": d1.model_name}], "CreationTime": NOW},
        {"EndpointConfigName": "demo-v1-d1"})
    stubbed.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "demo-v1-d1"})
    stubbed.add_response("delete_model", {}, {"ModelName": d1.model_name})

    deployment = t.deploy(releases[1])

    assert (deployment.release.version, deployment.previous.version) == ("2", "1")
    assert t.details(deployment).config_name == "demo-v2-d2"


def test_alarm_rollback_is_a_deploy_error_and_keeps_the_old_config(aws: Clients, stubbed, releases,
                                                                   tmp_path: Path):
    """Stubber: Updating → RollingBack → InService on the OLD config (FailureReason empty, as SageMaker does): a
    DeployError naming both configs; only the new config and model are deleted; the record still says v1."""
    t, d1 = deploy_v1_on_moto(aws, releases, tmp_path)
    model2 = model_of(releases[1])
    expect_update_start(aws, stubbed, d1, model2)
    stubbed.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/demo"})
    for status in ("Updating", "RollingBack", "InService"):
        stubbed.add_response("describe_endpoint", endpoint_reply(status, "demo-v1-d1", reason=""))
    stubbed.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "demo-v2-d2"})
    stubbed.add_response("delete_model", {}, {"ModelName": model2})

    with pytest.raises(DeployError, match="rolled back: the endpoint serves config demo-v1-d1, not the requested "
                                          "demo-v2-d2.*still serves config demo-v1-d1"):
        t.deploy(releases[1])

    record = t.store.load("demo-slm")
    assert (record.release.version, t.details(record).config_name) == ("1", "demo-v1-d1")


def test_wait_timeout_leaves_everything_in_place(aws: Clients, stubbed, releases, tmp_path: Path):
    """Stubber + fake clock: still Updating when wait_timeout_s passes → DeployError; nothing is deleted."""
    t, d1 = deploy_v1_on_moto(aws, releases, tmp_path, wait_timeout_s=100, poll_s=40)
    expect_update_start(aws, stubbed, d1, model_of(releases[1]))
    stubbed.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/demo"})
    for _ in range(4):  # t = 0, 40, 80, 120
        stubbed.add_response("describe_endpoint", endpoint_reply("Updating", "demo-v1-d1"))

    with pytest.raises(DeployError, match="still Updating after 100s .*requested config demo-v2-d2, previous "
                                          "demo-v1-d1.*nothing was deleted"):
        t.deploy(releases[1])

    assert t.store.load("demo-slm").release.version == "1"


def test_failed_new_endpoint_reports_the_reason_and_cleans_up(aws: Clients, stubbed, releases, tmp_path: Path):
    """Stubber: Creating → Failed with a FailureReason → DeployError carrying it; the failed endpoint, its config
    and model are deleted, and the alarms (on moto) too."""
    t = target(tmp_path, aws)
    aws.sagemaker = stubbed.client
    model = model_of(releases[0])
    not_found(stubbed, "describe_endpoint", "endpoint demo")
    not_found(stubbed, "describe_model", f"model {model}")
    stubbed.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m"})
    stubbed.add_response("create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:1:x/c"})
    stubbed.add_response("create_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/demo"},
                         {"EndpointName": "demo", "EndpointConfigName": "demo-v1-d1", "Tags": ANY})
    stubbed.add_response("describe_endpoint", endpoint_reply("Creating", "demo-v1-d1"))
    stubbed.add_response("describe_endpoint", endpoint_reply(
        "Failed", "demo-v1-d1", reason="The primary container for production variant AllTraffic did not pass the "
        "ping health check."))
    stubbed.add_response("delete_endpoint", {}, {"EndpointName": "demo"})
    stubbed.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "demo-v1-d1"})
    stubbed.add_response("delete_model", {}, {"ModelName": model})

    with pytest.raises(DeployError, match="is Failed on config demo-v1-d1: The primary container .* ping health"):
        t.deploy(releases[0])

    assert aws.cloudwatch.describe_alarms()["MetricAlarms"] == []
    assert t.store.load("demo-slm") is None


def test_rollback_redeploys_the_previous_version_through_the_guarded_update(aws: Clients, releases,
                                                                            tmp_path: Path, monkeypatch):
    """Moto on 127.0.0.1 for everything but update_endpoint, which moto lacks: here it is replaced by a function
    that switches the endpoint's config the way a successful update ends (delete + create under the same name)."""
    t, _ = deploy_v1_on_moto(aws, releases, tmp_path)
    calls = []
    sm = aws.sagemaker

    def update_endpoint(**params):
        calls.append(params)
        sm.delete_endpoint(EndpointName=params["EndpointName"])
        sm.create_endpoint(EndpointName=params["EndpointName"], EndpointConfigName=params["EndpointConfigName"])

    monkeypatch.setattr(sm, "update_endpoint", update_endpoint)
    t.deploy(releases[1])

    back = t.rollback("demo-slm")

    assert (back.release.version, back.previous.version) == ("1", "2")
    assert [c["EndpointConfigName"] for c in calls] == ["demo-v2-d2", "demo-v1-d3"]
    assert all("DeploymentConfig" in c and c["RetainAllVariantProperties"] for c in calls)
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == ["demo-v1-d3"]
    assert t.status("demo-slm").served_version == "1"


def test_a_sagemaker_binding_redeploys_through_this_target(tmp_path: Path):
    """configs/bindings.yaml may bind a sagemaker target: promotion → redeploy deploys through the guarded path."""
    from infra.platform.bindings import load_bindings
    from infra.targets import make_target

    path = tmp_path / "bindings.yaml"
    path.write_text("bindings:\n  - model: demo-slm\n    alias: champion\n    target: {target: sagemaker, region: "
                    f"us-east-1, bucket: {BUCKET}, endpoint_name: demo, role_arn: '{ROLE}', image_uri: {IMAGE}}}\n")

    [binding] = load_bindings(path)

    assert binding.key == "demo-slm@champion → sagemaker/demo-slm"
    assert type(make_target(binding.target, tmp_path)).__name__ == "SageMakerTarget"


def test_failed_smoke_test_after_an_update_puts_the_old_config_back(aws: Clients, releases, tmp_path: Path,
                                                                    monkeypatch):
    """Moto on 127.0.0.1 (update_endpoint replaced as in the rollback test): version 2 reaches InService, but
    moto's canned invoke body fails the golden prompt, so the guarded update runs back to version 1's config and
    version 2's config and model are deleted."""
    deploy_v1_on_moto(aws, releases, tmp_path)
    sm = aws.sagemaker

    def update_endpoint(**params):
        sm.delete_endpoint(EndpointName=params["EndpointName"])
        sm.create_endpoint(EndpointName=params["EndpointName"], EndpointConfigName=params["EndpointConfigName"])

    monkeypatch.setattr(sm, "update_endpoint", update_endpoint)

    with pytest.raises(DeployError, match="demo-slm/2 on demo failed its smoke test: .*config demo-v1-d1 serves"):
        target(tmp_path, aws, smoke_test=True).deploy(releases[1])

    assert sm.describe_endpoint(EndpointName="demo")["EndpointConfigName"] == "demo-v1-d1"
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == ["demo-v1-d1"]
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == [model_of(releases[0])]
    assert target(tmp_path, aws).status("demo-slm").served_version == "1"


def test_a_fresh_worker_redeploying_the_serving_version_changes_nothing(aws: Clients, releases, tmp_path: Path):
    """Moto on 127.0.0.1: a worker with no record of the endpoint (another pod, an empty SLMOPS_HOME) deploys the
    version it serves: the endpoint, its config and model stay as they are, and that worker records them."""
    first = target(tmp_path / "worker-a", aws)
    served = first.details(first.deploy(releases[0]))
    configs = aws.sagemaker.list_endpoint_configs()["EndpointConfigs"]

    fresh = target(tmp_path / "worker-b", aws)
    assert fresh.store.load("demo-slm") is None
    adopted = fresh.details(fresh.deploy(releases[0]))

    assert (adopted.config_name, adopted.model_name) == (served.config_name, served.model_name)
    assert aws.sagemaker.list_endpoint_configs()["EndpointConfigs"] == configs, "no config made, none deleted"
    described = aws.sagemaker.describe_endpoint(EndpointName="demo")
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", served.config_name)
    assert fresh.status("demo-slm").state == "up"


def test_a_fresh_worker_numbers_its_config_past_the_live_one_and_a_failure_keeps_it(aws: Clients, releases,
                                                                                  tmp_path: Path):
    """Moto on 127.0.0.1 (which has no update_endpoint, so the update itself fails): a worker without the record
    deploys other settings over a live endpoint. Its new config is numbered past the live config's (never the live
    name), and the cleanup after the failure deletes only what it made: the endpoint serves its config still."""
    first = target(tmp_path / "worker-a", aws)
    served = first.details(first.deploy(releases[0]))
    assert served.config_name == "demo-v1-d1"
    fresh = target(tmp_path / "worker-b", aws, instance_count=2)
    with pytest.raises(DeployError, match="demo-v1-d1"):
        fresh.deploy(releases[0])
    names = {c["EndpointConfigName"] for c in aws.sagemaker.list_endpoint_configs()["EndpointConfigs"]}
    assert names == {"demo-v1-d1"}, "demo-v1-d2 was made and removed; the live config was not touched"
    described = aws.sagemaker.describe_endpoint(EndpointName="demo")
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "demo-v1-d1")
    assert aws.sagemaker.describe_endpoint_config(EndpointConfigName="demo-v1-d1")["ProductionVariants"][0][
        "InitialInstanceCount"] == 1
