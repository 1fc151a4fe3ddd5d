"""The pieces of a SageMaker endpoint deploy: the endpoint config, the guarded update's DeploymentConfig, the
CloudWatch alarms it rolls back on, autoscaling, and waiting for a terminal status with a progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from infra.sagemaker.aws import AwsError, Clients, aws_name, is_missing
from infra.targets.config import SageMakerConfig

WAIT_THROUGH = ("Creating", "Updating", "SystemUpdating", "RollingBack")
TERMINAL = ("InService", "Failed", "UpdateRollbackFailed", "OutOfService")
DIMENSION = "sagemaker:variant:DesiredInstanceCount"


def endpoint_config(cfg: SageMakerConfig, name: str, model: str, tags: list[dict[str, str]]) -> dict[str, Any]:
    """CreateEndpointConfig parameters: one variant (instances or serverless), async and data capture as set."""
    variant: dict[str, Any] = {"VariantName": cfg.variant_name, "ModelName": model}
    if cfg.serverless_memory_mb:
        variant["ServerlessConfig"] = {"MemorySizeInMB": cfg.serverless_memory_mb,
                                       "MaxConcurrency": cfg.serverless_max_concurrency}
    else:
        variant.update(InstanceType=cfg.instance_type, InitialInstanceCount=cfg.instance_count)
    params: dict[str, Any] = {"EndpointConfigName": name, "ProductionVariants": [variant], "Tags": tags}
    if cfg.async_output:
        output: dict[str, Any] = {"S3OutputPath": cfg.async_output}
        if cfg.async_failure:
            output["S3FailurePath"] = cfg.async_failure
        topics = {k: v for k, v in (("SuccessTopic", cfg.async_success_topic),
                                    ("ErrorTopic", cfg.async_error_topic)) if v}
        if topics:
            output["NotificationConfig"] = topics
        params["AsyncInferenceConfig"] = {
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": cfg.async_max_concurrency},
            "OutputConfig": output}
    if cfg.capture_percent:
        params["DataCaptureConfig"] = {
            "EnableCapture": True, "InitialSamplingPercentage": cfg.capture_percent,
            "DestinationS3Uri": cfg.capture_destination or f"s3://{cfg.bucket}/{cfg.prefix}/capture",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json", "application/jsonlines"]}}
    return params


def deployment_config(cfg: SageMakerConfig, alarms: list[str]) -> dict[str, Any]:
    """UpdateEndpoint's DeploymentConfig: blue/green traffic shifting, rolled back when any alarm fires."""
    routing: dict[str, Any] = {"Type": cfg.strategy.upper(), "WaitIntervalInSeconds": cfg.bake_s}
    if cfg.strategy == "canary":
        routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": int(cfg.canary_percent)}
    elif cfg.strategy == "linear":
        routing["LinearStepSize"] = {"Type": "CAPACITY_PERCENT", "Value": int(cfg.linear_percent)}
    return {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing,
                                      "TerminationWaitInSeconds": cfg.termination_wait_s,
                                      "MaximumExecutionTimeoutInSeconds": cfg.max_update_s},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in alarms]}}


def put_alarms(clients: Clients, cfg: SageMakerConfig, endpoint: str) -> list[str]:
    """Create (or update) the variant's 5xx and model-latency alarms; return their names."""
    dims = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": cfg.variant_name}]
    alarms = {aws_name(endpoint, cfg.variant_name, "5xx"): ("Invocation5XXErrors", "Sum", cfg.max_5xx),
              aws_name(endpoint, cfg.variant_name, "latency"): ("ModelLatency", "Average",
                                                                 cfg.max_latency_ms * 1000)}  # microseconds
    for name, (metric, stat, threshold) in alarms.items():
        try:
            clients.cloudwatch.put_metric_alarm(
                AlarmName=name, Namespace="AWS/SageMaker", MetricName=metric, Dimensions=dims, Statistic=stat,
                Period=60, EvaluationPeriods=1, Threshold=threshold, TreatMissingData="notBreaching",
                ComparisonOperator="GreaterThanOrEqualToThreshold",
                AlarmDescription=f"slmops: rolls back updates of {endpoint}/{cfg.variant_name}")
        except Exception as exc:
            raise AwsError(f"put_metric_alarm {name}: {exc}") from None
    return list(alarms)


def put_autoscaling(clients: Clients, cfg: SageMakerConfig, endpoint: str) -> dict[str, Any]:
    """Register the variant with Application Auto Scaling and put its policies; return what to undo later.

    Real-time: target tracking on invocations per instance, minimum = instance_count. Async: minimum 0, target
    tracking on the backlog per instance, plus a step policy on HasBacklogWithoutCapacity, since target tracking
    alone never scales out from zero instances.
    """
    resource = f"endpoint/{endpoint}/variant/{cfg.variant_name}"
    scaling = clients.autoscaling
    minimum = 0 if cfg.async_output else cfg.instance_count
    scaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=DIMENSION,
                                     MinCapacity=minimum, MaxCapacity=cfg.max_instances)
    common = {"ServiceNamespace": "sagemaker", "ResourceId": resource, "ScalableDimension": DIMENSION}
    policies, alarms = [aws_name(endpoint, "scaling")], []
    if cfg.async_output:
        metric = {"MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
                  "Dimensions": [{"Name": "EndpointName", "Value": endpoint}], "Statistic": "Average"}
        tracking = {"TargetValue": cfg.target_backlog, "CustomizedMetricSpecification": metric}
    else:
        tracking = {"TargetValue": cfg.target_invocations,
                    "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}}
    scaling.put_scaling_policy(PolicyName=policies[0], PolicyType="TargetTrackingScaling", **common,
                               TargetTrackingScalingPolicyConfiguration={
                                   **tracking, "ScaleInCooldown": cfg.scale_in_cooldown_s,
                                   "ScaleOutCooldown": cfg.scale_out_cooldown_s})
    if cfg.async_output:
        policies.append(aws_name(endpoint, "from-zero"))
        arn = scaling.put_scaling_policy(
            PolicyName=policies[1], PolicyType="StepScaling", **common, StepScalingPolicyConfiguration={
                "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
                "Cooldown": cfg.scale_out_cooldown_s,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]})["PolicyARN"]
        alarms.append(aws_name(endpoint, "backlog-without-capacity"))
        clients.cloudwatch.put_metric_alarm(
            AlarmName=alarms[0], Namespace="AWS/SageMaker", MetricName="HasBacklogWithoutCapacity",
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}], Statistic="Average", Period=60,
            EvaluationPeriods=2, Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="missing", AlarmActions=[arn])
    return {"resource_id": resource, "policies": policies, "alarms": alarms, "min": minimum,
            "max": cfg.max_instances}


def remove_autoscaling(clients: Clients, scaling: dict[str, Any]) -> None:
    """Delete the policies and deregister the variant (what ``put_autoscaling`` made; missing ones are fine)."""
    common = {"ServiceNamespace": "sagemaker", "ResourceId": scaling["resource_id"], "ScalableDimension": DIMENSION}
    for policy in scaling.get("policies", []):
        _ignore_missing(lambda p=policy: clients.autoscaling.delete_scaling_policy(PolicyName=p, **common))
    _ignore_missing(lambda: clients.autoscaling.deregister_scalable_target(**common))
    if scaling.get("alarms"):
        clients.cloudwatch.delete_alarms(AlarmNames=scaling["alarms"])


def _ignore_missing(call: Callable[[], Any]) -> None:
    try:
        call()
    except Exception as exc:
        if not is_missing(exc):
            raise


def wait_for_endpoint(clients: Clients, endpoint: str, timeout_s: float, poll_s: float,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """DescribeEndpoint until a terminal status (or None when ``timeout_s`` passes first: the caller decides)."""
    from tqdm.auto import tqdm

    deadline = clock() + timeout_s
    with tqdm(total=None, desc=f"endpoint {endpoint}", bar_format="{desc}: {postfix} [{elapsed}]") as bar:
        while True:
            described = clients.sagemaker.describe_endpoint(EndpointName=endpoint)
            status = described["EndpointStatus"]
            bar.set_postfix_str(status)
            if status not in WAIT_THROUGH:
                return described
            if clock() >= deadline:
                described["TimedOut"] = True
                return described
            sleep(poll_s)
