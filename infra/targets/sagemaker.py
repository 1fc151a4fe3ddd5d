"""sagemaker: a real-time (serverless, async) endpoint, deployed through a guarded blue/green update.

deploy: model.tar.gz to S3 under its digest → create_model → a new endpoint config (same variant name) → the
variant's 5xx and latency alarms → create_endpoint, or update_endpoint with a DeploymentConfig (canary/linear
traffic shifting, automatic rollback on those alarms, variant properties retained) → wait through
Creating/Updating/RollingBack → success only when the endpoint is InService **on the requested config** (SageMaker
rolls back silently) → autoscaling → golden prompt → record → delete the previous config and model.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from infra.sagemaker.aws import AwsError, Clients, aws_name, ensure_model, is_missing, served_version, upload_model
from infra.sagemaker.invoke import answer_text, chat_body, invoke, invoke_async
from infra.sagemaker.pricing import hourly_cost
from infra.targets import sagemaker_endpoint as ep
from infra.targets.base import DeployError, Deployment, DeploymentStatus, RecordedTarget, check_answer, now
from infra.targets.config import SageMakerConfig
from infra.targets.tracing import container_trace_env
from tasks.engine.settings import engine_env
from tasks.records import ModelRelease

log = logging.getLogger(__name__)


def model_digest(artifact_digest: str, environment: dict[str, str]) -> str:
    """Eight hex digits naming a SageMaker model: its artifact's digest and its container environment."""
    return hashlib.sha256(json.dumps([artifact_digest, environment], sort_keys=True).encode()).hexdigest()[:8]


def config_serial(config: str | None) -> int:
    """The deploy number at the end of an endpoint config name slmops made (``…-v3-d7`` → 7; else 0)."""
    match = re.search(r"-d(\d+)$", config or "")
    return int(match[1]) if match else 0


class SageMakerDetails(BaseModel):
    """What a SageMaker deployment made (so undeploy removes exactly that) and what it costs."""

    region: str | None
    serial: int = Field(1, description="Deploys of this deployment so far (numbers the endpoint configs).")
    endpoint_name: str
    variant_name: str
    config_name: str
    model_name: str
    model_data: str
    alarms: list[str] = Field(default_factory=list)
    scaling: dict[str, Any] | None = None
    instance_type: str | None = None
    instance_count: int = 0
    serverless: bool = False
    async_output: str | None = None
    bucket: str | None = None
    prefix: str = "slmops"
    cost_per_hour: float | None = Field(None, description="USD/hour of the initial instances (price table).")
    smoke_test: str = Field("skipped", description="passed or skipped.")


class SageMakerTarget(RecordedTarget):
    """Deploy to a SageMaker endpoint with boto3."""

    kind = "sagemaker"

    def __init__(self, cfg: SageMakerConfig, root: Path, clients: Clients | None = None):
        super().__init__(cfg, root)
        self._clients = {None: clients} if clients else {}
        self.clock, self.sleep = time.monotonic, time.sleep  # tests substitute a fake clock

    def clients(self, region: str | None = None) -> Clients:
        """boto3 clients for the configured region (else the record's, else the environment's); tests may hand
        the target its clients."""
        if None in self._clients:
            return self._clients[None]
        region = self.cfg.region or region
        if region not in self._clients:
            self._clients[region] = Clients(region, self.cfg.endpoint_url)
        return self._clients[region]

    @staticmethod
    def details(record: Deployment) -> SageMakerDetails:
        """The typed details of a record."""
        return SageMakerDetails.model_validate(record.details)

    # deploy -------------------------------------------------------------------------------------------------

    def _deploy(self, release: ModelRelease, name: str, current: Deployment | None) -> Deployment:
        cfg = self.cfg
        missing = [f for f in ("role_arn", "bucket", "image_uri") if getattr(cfg, f) is None]
        if missing:
            raise DeployError(f"a sagemaker deploy needs {', '.join(missing)}: --set {missing[0]}=…")
        old = self.details(current) if current else None
        if old and cfg.endpoint_name and cfg.endpoint_name != old.endpoint_name:
            raise DeployError(f"deployment {name!r} serves on endpoint {old.endpoint_name}; undeploy it before "
                              f"moving it to {cfg.endpoint_name}")
        endpoint = cfg.endpoint_name or (old.endpoint_name if old else aws_name(name))
        c = self.clients(old.region if old else None)
        serving = self._describe(c, endpoint)
        if serving is not None and serving["EndpointStatus"] != "InService":
            raise DeployError(f"endpoint {endpoint} is {serving['EndpointStatus']} "
                              f"({serving.get('FailureReason') or 'no reason given'}); wait for it, or undeploy it")
        tags = [{"Key": "slmops:deployment", "Value": name}, {"Key": "slmops:version", "Value": release.version}]
        old_config = serving["EndpointConfigName"] if serving else None
        try:
            model_data, digest = upload_model(c, release, cfg.bucket, cfg.prefix)
            environment = engine_env(cfg.engine) | container_trace_env(cfg.trace_sample, cfg.trace_tracking_uri,
                                                                       release.model_id)
            # the name carries what the model is: the artifact and the engine settings it serves with
            model = aws_name(endpoint, f"v{release.version}", model_digest(digest, environment))
            new_model = ensure_model(c, model, release, cfg.image_uri, model_data, cfg.role_arn, tags, environment)
        except AwsError as exc:
            raise DeployError(f"deploying {release.ref} to {endpoint}: {exc}; nothing was changed on the endpoint") \
                from None
        # a config per deploy (a redeploy of one version needs a new name), numbered past the live config's and the
        # record's, so a worker without the record never reuses the name the endpoint serves
        serial = max(old.serial if old else 0, config_serial(old_config)) + 1
        config = aws_name(endpoint, f"v{release.version}", f"d{serial}")
        wanted = ep.endpoint_config(cfg, config, model, tags)
        adopted = current is None and old_config is not None and self._live_variants(c, old_config) == \
            wanted["ProductionVariants"]
        if adopted:  # no record here (a fresh worker), and the endpoint serves exactly this already: change nothing
            log.info("%s already serves %s as config %s: recorded, nothing changed", endpoint, release.ref,
                     old_config)
            config, serial = old_config, config_serial(old_config)
        made: dict[str, str | None] = {"config": None, "model": model if new_model else None}
        alarms: list[str] = []
        try:
            if not adopted:
                c.sagemaker.create_endpoint_config(**wanted)
                made["config"] = config  # only now is it ours to delete on failure
            alarms = [] if cfg.serverless_memory_mb else ep.put_alarms(c, cfg, endpoint)
            if not adopted:
                self._switch(c, endpoint, config, old_config, alarms, tags)
        except AwsError as exc:
            new = old_config is None  # a new endpoint that failed goes, with its alarms; an update keeps them
            self._forget(c, made, endpoint if new else None, alarms if new else None)
            raise DeployError(f"deploying {release.ref} to {endpoint}: {exc}; {self._serving(old_config)}") from None
        details = SageMakerDetails(
            region=c.region, serial=serial, endpoint_name=endpoint, variant_name=cfg.variant_name, config_name=config,
            model_name=model, model_data=model_data, alarms=alarms, serverless=bool(cfg.serverless_memory_mb),
            instance_type=None if cfg.serverless_memory_mb else cfg.instance_type,
            instance_count=0 if cfg.serverless_memory_mb else cfg.instance_count, async_output=cfg.async_output,
            bucket=cfg.bucket, prefix=cfg.prefix,
            cost_per_hour=None if cfg.serverless_memory_mb else hourly_cost(cfg.prices, cfg.instance_type,
                                                                               cfg.instance_count))
        if cfg.autoscaling and not cfg.serverless_memory_mb:
            try:
                details.scaling = ep.put_autoscaling(c, cfg, endpoint)
            except Exception as exc:  # the endpoint must not serve the new version without its scaling
                undone = self._undo(c, details, old_config, made, tags)
                raise DeployError(f"{release.ref} on {endpoint}: autoscaling failed: {exc}; {undone}") from None
        details.smoke_test = self._smoke(c, details, release, old_config, made, tags)
        deployment = Deployment(name=name, target="sagemaker", release=release, since=now(),
                                endpoint=f"https://runtime.sagemaker.{c.region}.amazonaws.com/endpoints/"
                                         f"{endpoint}/invocations",
                                previous=current.release if current else None, details=details.model_dump())
        self.store.save(deployment)
        if old_config is not None and old_config != config:
            self._retire(c, old_config, keep_model=model)
        return deployment

    def _live_variants(self, c: Clients, config: str) -> list[dict[str, Any]] | None:
        """The production variants of endpoint config ``config`` as CreateEndpointConfig takes them (None when it
        cannot be read)."""
        try:
            variants = c.sagemaker.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
        except Exception as exc:
            log.warning("describe_endpoint_config %s: %s", config, exc)
            return None
        keys = ("VariantName", "ModelName", "InstanceType", "InitialInstanceCount", "ServerlessConfig")
        return [{k: v[k] for k in keys if k in v} for v in variants]

    def _describe(self, c: Clients, endpoint: str) -> dict[str, Any] | None:
        try:
            return c.sagemaker.describe_endpoint(EndpointName=endpoint)
        except Exception as exc:
            if is_missing(exc):
                return None
            raise DeployError(f"describe_endpoint {endpoint}: {exc}") from None

    def _switch(self, c: Clients, endpoint: str, config: str, old_config: str | None, alarms: list[str],
                tags: list[dict[str, str]]) -> None:
        """Create the endpoint, or move it to ``config`` through the guarded update; then insist it serves
        ``config``."""
        try:
            if old_config is None:
                c.sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=config, Tags=tags)
            else:
                guard = {} if self.cfg.serverless_memory_mb else {
                    "DeploymentConfig": ep.deployment_config(self.cfg, alarms + self.cfg.alarms)}
                c.sagemaker.update_endpoint(
                    EndpointName=endpoint, EndpointConfigName=config, RetainAllVariantProperties=True,
                    ExcludeRetainedVariantProperties=[{"VariantPropertyType": "DataCaptureConfig"}], **guard)
        except Exception as exc:
            raise AwsError(f"{'create' if old_config is None else 'update'}_endpoint: {exc}") from None
        described = ep.wait_for_endpoint(c, endpoint, self.cfg.wait_timeout_s, self.cfg.poll_s, self.clock,
                                         self.sleep)
        status, serving = described["EndpointStatus"], described.get("EndpointConfigName")
        reason = described.get("FailureReason") or "no reason given"
        if described.get("TimedOut"):
            raise DeployError(f"endpoint {endpoint} is still {status} after {self.cfg.wait_timeout_s:.0f}s "
                              f"(requested config {config}, previous {old_config or 'none'}); nothing was deleted: "
                              f"watch it in the SageMaker console, then slmops status")
        if status == "InService" and serving == config:
            return
        if status == "InService":
            raise AwsError(f"the update was rolled back: the endpoint serves config {serving}, not the requested "
                           f"{config} (FailureReason: {reason})")
        raise AwsError(f"the endpoint is {status} on config {serving}: {reason}")

    def _smoke(self, c: Clients, details: SageMakerDetails, release: ModelRelease, old_config: str | None,
               made: dict[str, str | None], tags: list[dict[str, str]]) -> str:
        """The golden prompt through the endpoint; a failure puts the previous config back (or removes a new
        endpoint) and raises."""
        if not self.cfg.smoke_test:
            log.warning("smoke test skipped (smoke_test=false): %s was not sent a golden prompt",
                        details.endpoint_name)
            return "skipped"
        body = chat_body(self.cfg.golden_prompt, self.cfg.golden_max_tokens)
        try:
            if details.async_output:
                raw, _ = invoke_async(c, details.endpoint_name, body, self.cfg.bucket, self.cfg.prefix,
                                      self.cfg.wait_timeout_s, sleep=self.sleep)
            else:
                raw = invoke(c, details.endpoint_name, body)
            try:
                answer = answer_text(raw)
            except (ValueError, KeyError, IndexError, TypeError):
                raise DeployError(f"the golden prompt got an answer that is not a chat completion: "
                                  f"{raw[:200]!r}") from None
            check_answer(answer, self.cfg.golden_expect, details.endpoint_name)
        except (AwsError, DeployError) as exc:
            undone = self._undo(c, details, old_config, made, tags)
            raise DeployError(f"{release.ref} on {details.endpoint_name} failed its smoke test: {exc}; {undone}") \
                from None
        return "passed"

    def _undo(self, c: Clients, details: SageMakerDetails, old_config: str | None, made: dict[str, str | None],
              tags: list[dict[str, str]]) -> str:
        if old_config is not None and made["config"] is None:  # adopted what served: there is nothing to put back
            return f"nothing was changed: config {old_config} serves as before"
        if old_config is None:
            if details.scaling:
                ep.remove_autoscaling(c, details.scaling)
            self._forget(c, made, details.endpoint_name, details.alarms)
            return "the new endpoint was deleted"
        try:
            self._switch(c, details.endpoint_name, old_config, made["config"], details.alarms, tags)
        except (AwsError, DeployError) as exc:
            return f"putting config {old_config} back failed too ({exc}): see slmops status"
        self._forget(c, made)
        return f"config {old_config} serves again"

    def _forget(self, c: Clients, made: dict[str, str | None], endpoint: str | None = None,
                alarms: list[str] | None = None) -> None:
        """Delete what a failed deploy made (the endpoint too when it created it): only names this deploy created,
        never a config or model that was there before (such as the one the endpoint serves); best effort, logged."""
        calls = [("delete_endpoint", {"EndpointName": endpoint})] if endpoint else []
        calls += [("delete_endpoint_config", {"EndpointConfigName": made["config"]})] if made.get("config") else []
        calls += [("delete_model", {"ModelName": made["model"]})] if made.get("model") else []
        for call, params in calls:
            try:
                getattr(c.sagemaker, call)(**params)
            except Exception as exc:
                if not is_missing(exc):
                    log.warning("%s %s: %s", call, params, exc)
        if alarms:
            c.cloudwatch.delete_alarms(AlarmNames=alarms)

    def _retire(self, c: Clients, config: str, keep_model: str) -> None:
        """Delete the previous endpoint config and its model (unless the new config uses the same model)."""
        try:
            variants = c.sagemaker.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
            c.sagemaker.delete_endpoint_config(EndpointConfigName=config)
            for model in {v["ModelName"] for v in variants} - {keep_model}:
                c.sagemaker.delete_model(ModelName=model)
        except Exception as exc:
            log.warning("could not delete the previous config %s or its model: %s", config, exc)

    def _serving(self, old_config: str | None) -> str:
        if old_config is None:
            return "nothing served before and the new endpoint was removed"
        return f"the endpoint still serves config {old_config}"

    # status, undeploy ---------------------------------------------------------------------------------------

    def probe(self, record: Deployment) -> DeploymentStatus:
        """Status and config the endpoint has now, and the version that config's model serves."""
        d = self.details(record)
        c = self.clients(d.region)
        try:
            described = c.sagemaker.describe_endpoint(EndpointName=d.endpoint_name)
            served = served_version(c, described["EndpointConfigName"])
        except Exception as exc:
            problem = f"endpoint {d.endpoint_name} does not exist" if is_missing(exc) else f"AWS: {exc}"
            return DeploymentStatus.probed(record, None, problem)
        status = DeploymentStatus.probed(record, served, None if described["EndpointStatus"] == "InService" else
                                         f"endpoint is {described['EndpointStatus']}")
        if status.state == "drift" or described["EndpointConfigName"] != d.config_name:
            status.problem = (f"serves config {described['EndpointConfigName']} (version {served}), the record says "
                              f"{d.config_name} (version {record.release.version})")
            status.state = "drift"
        status.cost_per_hour = d.cost_per_hour
        return status

    def _teardown(self, record: Deployment) -> None:
        """Delete the scaling policies, the endpoint, its config, its model and the alarms this target made."""
        d = self.details(record)
        c = self.clients(d.region)
        if d.scaling:
            ep.remove_autoscaling(c, d.scaling)
        try:
            config = c.sagemaker.describe_endpoint(EndpointName=d.endpoint_name)["EndpointConfigName"]
        except Exception as exc:
            if not is_missing(exc):
                raise DeployError(f"describe_endpoint {d.endpoint_name}: {exc}") from None
            config = None
        configs = dict.fromkeys(filter(None, (d.config_name, config)))
        models = {d.model_name}
        for name in configs:
            try:
                models |= {v["ModelName"] for v in
                           c.sagemaker.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"]}
            except Exception as exc:
                if not is_missing(exc):
                    raise DeployError(f"describe_endpoint_config {name}: {exc}") from None
        calls = [("delete_endpoint", {"EndpointName": d.endpoint_name}) if config else None,
                 *(("delete_endpoint_config", {"EndpointConfigName": n}) for n in configs),
                 *(("delete_model", {"ModelName": m}) for m in sorted(models))]
        for call, params in filter(None, calls):
            try:
                getattr(c.sagemaker, call)(**params)
            except Exception as exc:
                if not is_missing(exc):
                    raise DeployError(f"{call} {json.dumps(params)}: {exc}") from None
        if d.alarms:
            c.cloudwatch.delete_alarms(AlarmNames=d.alarms)
        if d.cost_per_hour is not None:
            hours = (time.time() - calendar.timegm(time.strptime(record.since, "%Y-%m-%dT%H:%M:%SZ"))) / 3600
            log.warning("%s served %.3f hours since %s: about $%.2f at its initial instance count",
                        d.endpoint_name, hours, record.since, hours * d.cost_per_hour)
