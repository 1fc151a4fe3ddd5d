"""``BatchConfig``: generation, error budget, drift thresholds and the executor of one batch transform."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from tasks.config import StageConfig, format_validation_error, parse_overrides
from tasks.config import _set_dotted as set_dotted
from tasks.errors import ConfigError


class GenerationSettings(StageConfig):
    """How every record is answered."""

    max_new_tokens: int = Field(64, gt=0, description="Tokens generated per record at most (less where the "
                                "prompt leaves less room in the context window); a cut answer has finish_reason "
                                "'length'.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 is greedy (reproducible); above 0 samples.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (only when temperature > 0).")
    seed: int = Field(0, ge=0, description="Random seed for sampling; each record draws from its own generator "
                      "(this seed and its id), so a record's answer repeats whatever part or company it is in.")


class DriftConfig(StageConfig):
    """Input drift against the model version's training-prompt profile (PSI per feature)."""

    enabled: bool = Field(True, description="Profile the input and compare it with the version's reference.")
    warn: float = Field(0.1, ge=0, description="PSI at or above which a feature is reported as drifting.")
    fail: float | None = Field(0.25, ge=0, description="PSI at or above which the job fails before generating "
                               "(null: never fail, only warn).")
    min_rows: int = Field(50, ge=1, description="Inputs with fewer valid rows are profiled and reported, but "
                          "never warn or fail (PSI on a few rows is noise).")

    @model_validator(mode="after")
    def _order(self) -> DriftConfig:
        if self.fail is not None and self.fail < self.warn:
            raise ValueError(f"drift.fail ({self.fail}) is below drift.warn ({self.warn})")
        return self


class OutputChecks(StageConfig):
    """Checks on the generated answers; over a share, the run logs a warning and the report flags it."""

    warn_empty_share: float = Field(0.0, ge=0, le=1, description="Share of empty answers above which to warn.")
    warn_truncated_share: float = Field(0.1, ge=0, le=1, description="Share of answers cut by the length limit "
                                        "(finish_reason 'length') above which to warn.")


class LocalExecutorConfig(StageConfig):
    """Generation in this process by the serving engine, continuously batched (records sorted by prompt length)."""

    type: Literal["local"] = "local"
    batch_size: int = Field(16, ge=1, le=32, description="Records decoded together: the engine's rows (at most "
                            "32, what onnxruntime-genai 0.18 takes for a model the engine serves in static "
                            "batches).")
    threads: int | None = Field(None, ge=1, description="onnxruntime intra-op threads (default: SLMOPS_THREADS, "
                                "else all cores).")


class SageMakerExecutorConfig(StageConfig):
    """One SageMaker batch transform job per part on the serving image: rows split by line, sent in
    multi-record mini-batches, answers joined to their input rows (so each keeps its id)."""

    type: Literal["sagemaker"] = "sagemaker"
    region: str | None = Field(None, description="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION).")
    endpoint_url: str | None = Field(None, description="AWS API endpoint override (default: AWS_ENDPOINT_URL).")
    role_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$", description="Execution "
                                 "role of the model (needed unless model_name names an existing model).")
    bucket: str = Field(..., min_length=3, description="S3 bucket for model.tar.gz, job input and output.")
    prefix: str = Field("slmops", description="Key prefix under the bucket.")
    image_uri: str | None = Field(None, description="Serving image (needed unless model_name is set).")
    model_name: str | None = Field(None, description="Existing SageMaker model to run instead of one made from "
                                   "the model version (e.g. the one a sagemaker deployment created).")
    instance_type: str = Field("ml.m5.large", pattern=r"^ml\.", description="Transform instance type.")
    instance_count: int = Field(1, ge=1, description="Transform instances.")
    max_payload_mb: int = Field(6, ge=1, le=100, description="Largest mini-batch sent in one request (MB).")
    max_concurrent_transforms: int = Field(1, ge=1, description="Parallel requests per instance.")
    invocations_timeout_s: int = Field(600, ge=1, le=3600, description="Timeout of one /invocations request.")
    invocations_max_retries: int = Field(1, ge=0, le=3, description="Retries of a failed /invocations request.")
    timeout_s: float = Field(6 * 3600, gt=0, description="How long one job may run before it is stopped.")
    poll_s: float = Field(30, ge=0, description="Seconds between DescribeTransformJob polls.")
    price_per_hour: float | None = Field(None, ge=0, description="USD per instance-hour for the cost report "
                                         "(default: infra/sagemaker/pricing.py's table).")

    @model_validator(mode="after")
    def _payload(self) -> SageMakerExecutorConfig:
        if self.max_payload_mb * self.max_concurrent_transforms > 100:
            raise ValueError("max_payload_mb × max_concurrent_transforms must stay within 100 (SageMaker's limit)")
        if self.model_name is None and (self.role_arn is None or self.image_uri is None):
            raise ValueError("set model_name, or role_arn and image_uri to make a model from the version")
        return self


ExecutorConfig = Annotated[LocalExecutorConfig | SageMakerExecutorConfig, Field(discriminator="type")]


class BatchConfig(StageConfig):
    """One batch transform: MODEL_REF over an input JSONL into committed output parts."""

    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    max_error_rate: float = Field(0.05, ge=0, le=1, description="Largest share of input rows that may be "
                                  "malformed (or not fit the model) before the job fails; the rest are processed "
                                  "and the bad ones listed in errors.jsonl.")
    part_size: int = Field(256, ge=1, description="Records per committed output part: the unit of resume.")
    drift: DriftConfig = Field(default_factory=DriftConfig)
    checks: OutputChecks = Field(default_factory=OutputChecks)
    executor: ExecutorConfig = Field(default_factory=LocalExecutorConfig,
                                     description="Where generation runs: local (this process) or sagemaker "
                                     "(a batch transform job per part).")

    @model_validator(mode="before")
    @classmethod
    def _default_executor_type(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("executor"), dict) and "type" not in raw["executor"]:
            raw = {**raw, "executor": {"type": "local", **raw["executor"]}}
        return raw

    def output_key(self) -> dict[str, Any]:
        """The settings that change what the output holds (a resumed run must use the same)."""
        return {"generation": self.generation.model_dump(), "part_size": self.part_size}


def batch_config(overrides: list[str]) -> BatchConfig:
    """``BatchConfig`` from ``--set key=value`` pairs, or a ConfigError naming every bad key."""
    raw: dict[str, Any] = {}
    for key, value in parse_overrides(overrides):
        set_dotted(raw, key, value)
    try:
        return BatchConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "batch --set options")) from None
