"""Target configs: one model per target, discriminated by ``target`` (the deploy stage's config)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from infra.sagemaker.pricing import DEFAULT_PRICES, PRICES_AS_OF
from tasks.config import GgufType, StageConfig
from tasks.engine.settings import EngineConfig


def engine_keys_nested(data: Any) -> Any:
    """Engine settings given at a target's top level (``scheduler: batches``, as configs before ``engine:`` did)
    moved under ``engine``; one given in both places is a ValueError."""
    if not isinstance(data, dict):
        return data
    flat = {k: data[k] for k in EngineConfig.model_fields if k in data}
    if not flat:
        return data
    nested = dict(data.get("engine") or {})
    if twice := sorted(set(flat) & set(nested)):
        raise ValueError(f"{', '.join(twice)} given both at the top level and under engine; keep engine.{twice[0]}")
    return {**{k: v for k, v in data.items() if k not in flat}, "engine": {**nested, **flat}}


class _Common(StageConfig):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                             description="Deployment name (default: the registered model name).")
    golden_prompt: str = Field("Reverse: a b c", min_length=1, description="Smoke-test prompt sent after deploy.")
    golden_expect: str | None = Field(None, description="Text the golden answer must contain (default: any "
                                      "non-empty answer).")
    golden_max_tokens: int = Field(16, gt=0, description="Tokens the golden answer may use.")
    lock_timeout_s: float = Field(900, gt=0, description="How long to wait for another deploy, rollback or "
                                  "undeploy of the same deployment to finish before giving up.")


DEFAULT_PORT = 8080


class LocalTargetConfig(_Common):
    """Our serving runtime as managed background processes behind a stable-port proxy (blue/green)."""

    target: Literal["local"] = "local"
    port: int | None = Field(None, ge=1, le=65535, description="Stable port clients use (127.0.0.1). Default: "
                             "the deployment's current port, 8080 for a new one; another port moves it there.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="The serving engine's batching, "
                                 "queueing and threads (python -m infra.serving --help lists each).")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key "
                                    "(the key itself is never stored or logged).")
    startup_timeout_s: float = Field(120, gt=0, description="How long a new version may take to become healthy.")
    drain_timeout_s: float = Field(60, gt=0, description="How long the old version may finish in-flight requests.")
    capture_percent: float = Field(0.0, ge=0, le=100, description="Data capture: share of requests whose bodies "
                                   "are kept (0: off), replayable with slmops batch.")
    capture_destination: str = Field("", description="Data capture: directory or s3://bucket/prefix.")
    trace_sample: float | None = Field(None, ge=0, le=1, description="Share of requests recorded as MLflow traces "
                                       "(in the deploying process's MLFLOW_TRACKING_URI). Default: all of them "
                                       "when that names a tracking server (http, https), else none.")

    _flat_engine_keys = model_validator(mode="before")(engine_keys_nested)


class FoundryTargetConfig(_Common):
    """Foundry Local: the model layout in its cache, registered and loaded with foundry-local-sdk."""

    target: Literal["foundry"] = "foundry"
    cache_dir: str | None = Field(None, description="Foundry Local model cache (default $SLMOPS_HOME/foundry/cache).")


class OllamaTargetConfig(_Common):
    """Ollama: GGUF + Modelfile created through Ollama's REST API."""

    target: Literal["ollama"] = "ollama"
    host: str = Field("http://127.0.0.1:11434", description="Ollama server URL.")
    gguf: list[GgufType] = Field(["Q4_K_M", "Q4_0", "q8_0", "f16"], min_length=1,
                                 description="GGUF types to use, in order of preference.")
    temperature: float = Field(0.0, ge=0, le=2, description="PARAMETER temperature in the Modelfile.")
    num_ctx: int | None = Field(None, gt=0, description="PARAMETER num_ctx (default: the model's context).")


class SageMakerConfig(_Common):
    """SageMaker real-time (or serverless, or async) endpoint through boto3; updates are blue/green with automatic
    rollback on CloudWatch alarms. Deploy needs role_arn, bucket and image_uri; undeploy and status need only the
    region (the rest is read from the deployment record)."""

    target: Literal["sagemaker"] = "sagemaker"
    engine: EngineConfig = Field(default_factory=EngineConfig, description="The serving engine's settings in our "
                                 "image (passed as SLMOPS_ENGINE_* environment variables; other images ignore "
                                 "them).")
    region: str | None = Field(None, description="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION, or the "
                               "record's region).")
    endpoint_url: str | None = Field(None, description="AWS API endpoint override (default: AWS_ENDPOINT_URL, "
                                     "which boto3 reads itself; for a local stand-in such as moto).")
    role_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$",
                                 description="Execution role SageMaker assumes to pull the image and the model.")
    bucket: str | None = Field(None, min_length=3, description="S3 bucket for model.tar.gz (and async I/O).")
    prefix: str = Field("slmops", description="Key prefix under the bucket.")
    image_uri: str | None = Field(None, description="Serving image in ECR: ours (infra/sagemaker/Dockerfile) or a "
                                  "compatible one (LMI, TGI, llama.cpp DLC).")
    instance_type: str = Field("ml.m5.large", pattern=r"^ml\.", description="Instance type of the variant.")
    instance_count: int = Field(1, ge=1, description="Initial instances (and the autoscaling minimum).")
    endpoint_name: str | None = Field(None, pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$",
                                      description="Endpoint name (default: the deployment name).")
    variant_name: str = Field("AllTraffic", pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$",
                              description="Production variant name, kept across versions (blue/green needs it).")
    strategy: Literal["canary", "linear", "all_at_once"] = Field(
        "canary", description="Traffic shifting of an update: canary (one step, then the rest), linear (equal "
        "steps) or all_at_once; each step bakes while the alarms watch.")
    canary_percent: float = Field(10, gt=0, le=50, description="canary: share of capacity that takes traffic first.")
    linear_percent: float = Field(10, ge=10, le=50, description="linear: share of capacity shifted per step.")
    bake_s: int = Field(300, ge=0, le=3600, description="Seconds each traffic step bakes before the next.")
    max_update_s: int = Field(3600, ge=600, le=28800, description="SageMaker's own limit on one blue/green update.")
    termination_wait_s: int = Field(0, ge=0, le=3600, description="Seconds the old fleet stays after the switch.")
    alarms: list[str] = Field(default_factory=list, max_length=8, description="Extra CloudWatch alarms that roll "
                              "an update back (besides the 5xx and latency alarms the deploy creates).")
    max_5xx: int = Field(1, ge=1, description="Created alarm: Invocation5XXErrors per minute that trip it.")
    max_latency_ms: float = Field(5000, gt=0, description="Created alarm: average ModelLatency (ms) that trips it.")
    wait_timeout_s: float = Field(3600, gt=0, description="How long to wait for Creating/Updating/RollingBack.")
    poll_s: float = Field(15, ge=0, description="Seconds between DescribeEndpoint polls.")
    smoke_test: bool = Field(True, description="Send the golden prompt through invoke_endpoint after deploy "
                             "(false: skipped, and the deploy says so).")
    serverless_memory_mb: int | None = Field(None, ge=1024, le=6144, multiple_of=1024, description="Serverless "
                                             "inference with this much memory (instance fields are then unused).")
    serverless_max_concurrency: int = Field(5, ge=1, le=200, description="Serverless: concurrent invocations.")
    async_output: str | None = Field(None, pattern=r"^s3://", description="Asynchronous inference: S3 URI for "
                                     "results (enables async).")
    async_failure: str | None = Field(None, pattern=r"^s3://", description="Async: S3 URI for failures.")
    async_success_topic: str | None = Field(None, description="Async: SNS topic ARN notified on success.")
    async_error_topic: str | None = Field(None, description="Async: SNS topic ARN notified on error.")
    async_max_concurrency: int = Field(4, ge=1, le=1000, description="Async: requests per instance at once.")
    capture_percent: int = Field(0, ge=0, le=100, description="Data capture: share of requests captured (0: off).")
    capture_destination: str | None = Field(None, pattern=r"^s3://", description="Data capture: S3 URI (default "
                                            "s3://<bucket>/<prefix>/capture).")
    trace_sample: float = Field(0.0, ge=0, le=1, description="Share of requests the container records as MLflow "
                                "traces (0: off; the container then needs network access to the tracking server, "
                                "and sagemaker-mlflow for a SageMaker MLflow ARN).")
    trace_tracking_uri: str = Field("", description="Tracking URI the container traces to ('': the deploying "
                                    "process's MLFLOW_TRACKING_URI).")
    autoscaling: bool = Field(True, description="Application Auto Scaling on the variant (not for serverless).")
    max_instances: int = Field(4, ge=1, description="Autoscaling maximum.")
    target_invocations: float = Field(100, gt=0, description="Real-time: invocations per instance per minute the "
                                      "target-tracking policy holds.")
    target_backlog: float = Field(5, gt=0, description="Async: queued requests per instance the policy holds.")
    scale_in_cooldown_s: int = Field(300, ge=0, description="Autoscaling scale-in cooldown.")
    scale_out_cooldown_s: int = Field(60, ge=0, description="Autoscaling scale-out cooldown.")
    prices: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PRICES), description="USD per "
                                     f"instance-hour by instance type (defaults: us-east-1 list prices as of "
                                     f"{PRICES_AS_OF}; see infra/sagemaker/pricing.py).")

    @model_validator(mode="after")
    def _consistent(self) -> SageMakerConfig:
        if self.serverless_memory_mb and self.async_output:
            raise ValueError("serverless and asynchronous inference exclude each other")
        if self.autoscaling and not self.serverless_memory_mb and self.max_instances < self.instance_count:
            raise ValueError(f"max_instances ({self.max_instances}) is below instance_count ({self.instance_count})")
        return self


DeployConfig = Annotated[LocalTargetConfig | FoundryTargetConfig | OllamaTargetConfig | SageMakerConfig,
                         Field(discriminator="target")]
