"""One pydantic model per stage; the same models validate YAML, ``--set`` overrides and the Prefect UI form."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.errors import ConfigError
from tasks.evaluate.metrics import DEGRADATION, SCORED
from tasks.quantize.calibration_text import check_source

OnnxPrecision = Literal["int4", "int8", "fp32"]
GgufType = Literal["f16", "q8_0", "Q4_0", "Q4_K_M"]


class StageConfig(BaseModel):
    """Base: a misspelt key is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(StageConfig):
    """Where the instruction data lives and how it is tokenized."""

    train: str = Field(description="Train split: local JSONL path or s3:// URI (chat or prompt/completion rows).")
    validation: str | None = Field(None, description="Validation split (JSONL path or s3:// URI).")
    test: str | None = Field(None, description="Test split used for exact-match evaluation.")
    max_length: int = Field(256, gt=8, le=32768, description="Tokens per example; longer rows are rejected.")


class TrainLoopConfig(StageConfig):
    """Optimizer settings shared by every training stage."""

    steps: int = Field(200, gt=0, description="Optimizer steps.")
    batch_size: int = Field(16, gt=0, description="Examples per step.")
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="Peak AdamW learning rate (linear decay).")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    eval_every: int = Field(50, gt=0, description="Steps between validation-loss measurements.")


class DistillConfig(TrainLoopConfig):
    """Knowledge distillation of a teacher into a smaller student."""

    enabled: bool = Field(True, description="Run distillation; when off the student goes straight to LoRA.")
    teacher: str = Field(description="Teacher model: local folder, hub id, demo:teacher, gguf:PATH (a file or "
                         "package/inside/it.gguf) or ollama:NAME[:TAG] (from the local Ollama store).")
    student: str = Field(description="Student model to train: local folder, hub id, demo:student-qwen2, "
                         "gguf:PATH or ollama:NAME[:TAG] (dequantized once, cached by the GGUF's digest).")
    method: Literal["auto", "logit", "sequence"] = Field(
        "auto",
        description="logit: KL on soft targets (needs a shared tokenizer); sequence: train on teacher "
        "generations; auto: logit when the tokenizers match, else sequence.",
    )
    temperature: float = Field(2.0, gt=0, le=20, description="Softmax temperature T for logit distillation.")
    kl_weight: float = Field(0.5, ge=0, le=1, description="Weight of the KL term; CE gets 1 - kl_weight.")
    max_new_tokens: int = Field(32, gt=0, description="Answer length the teacher may generate (sequence).")
    max_empty_share: float = Field(0.1, ge=0, le=1, description="Sequence-level: largest share of training "
                                   "prompts the teacher may leave unanswered (empty answer) before distillation "
                                   "fails; the empty ones are dropped and counted in the log.")


class FinetuneConfig(TrainLoopConfig):
    """LoRA fine-tuning followed by a merge into a plain Hugging Face folder."""

    enabled: bool = Field(True, description="Run LoRA fine-tuning.")
    r: int = Field(8, gt=0, le=1024, description="LoRA rank.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Module names that get LoRA adapters.",
    )
    qlora: bool = Field(False, description="Load the base in 4-bit (needs CUDA and bitsandbytes).")


class QuantizeConfig(StageConfig):
    """Which quantized artifacts to build from the merged model."""

    onnx: list[OnnxPrecision] = Field(["int4", "int8", "fp32"], description="ONNX precisions to build with the "
                                      "onnxruntime-genai model builder.")
    int4_block_size: Literal[16, 32, 64, 128, 256] = Field(32, description="Weights per int4 quantization block.")
    int4_algorithm: Literal["rtn", "k_quant", "rtn_last", "k_quant_last"] = Field(
        "k_quant", description="int4 weight quantization algorithm; the *_last variants keep the last MatMul "
        "(lm_head) in int8.")
    int4_accuracy_level: Literal[1, 2, 3, 4] | None = Field(
        None, description="MatMulNBits compute type: 1 fp32, 2 fp16, 3 bf16, 4 int8 activations (the builder's "
        "CPU default, fastest); unset keeps the builder's default.")
    int4_embeddings: bool = Field(False, description="Quantize the token embedding table to int4 as well "
                                  "(GatherBlockQuantized); without it the table stays fp32, the largest part "
                                  "of a small model with a big vocabulary.")
    olive_gptq: bool = Field(False, description="Also build an int4 model with Olive: GPTQ calibrated on the "
                             "train split, then built to ONNX by the model builder with the int4 settings above.")
    olive_calibration_samples: int = Field(64, gt=0, description="Train rows used to calibrate GPTQ.")
    olive_damp_percent: float = Field(0.01, gt=0, lt=1, description="GPTQ damping: share of the mean Hessian "
                                      "diagonal added before inverting it.")
    olive_mixed_precision: Literal["none", "k_quant_down", "k_quant_mixed"] = Field(
        "none", description="Olive's SelectiveMixedPrecision preset before GPTQ (llama.cpp's choice of sensitive "
        "layers: the first and last eighth and every third): k_quant_down quantizes their down_proj to int8, "
        "k_quant_mixed their q/k/v and down_proj; none keeps every layer int4.")
    olive_calibration_text: str | None = Field(
        None, description="General text mixed into GPTQ calibration beside the train rows, so the int4 build keeps "
        "what the model knows besides the task: a plain UTF-8 file, or 'python-docs' (the Python Language "
        "Reference topics every CPython ships in pydoc_data; PSF License). Cut into windows of data.max_length "
        "tokens, spread over the whole text.")
    olive_calibration_text_share: float = Field(0.5, gt=0, lt=1, description="Share of olive_calibration_samples "
                                                "taken from olive_calibration_text (the rest are train rows).")
    gguf: list[GgufType] = Field([], description="GGUF files to build for Ollama / llama.cpp "
                                 "(needs the llama-cpp-python extra).")
    served: str = Field("onnx-int4", description="Artifact that is registered and deployed: one of the ONNX "
                        "artifacts built here (onnx-int4, onnx-int8, onnx-fp32, olive-gptq-int4).")
    adapter_only: bool = Field(False, description="When the gate passes, also register the LoRA fine-tune alone: "
                               "an adapter-only version of '<name>-lora' beside a multi-LoRA int4 base "
                               "'<name>-base' built from the model before fine-tuning (needs finetune.enabled).")

    def artifact_names(self) -> list[str]:
        """Names of the artifacts this config builds, in build order."""
        return ([f"onnx-{p}" for p in self.onnx] + (["olive-gptq-int4"] if self.olive_gptq else [])
                + [f"gguf-{t}" for t in self.gguf])

    @field_validator("olive_calibration_text")
    @classmethod
    def _calibration_text_exists(cls, value: str | None) -> str | None:
        return check_source(value) if value is not None else None

    @model_validator(mode="after")
    def _served_is_built(self) -> QuantizeConfig:
        servable = [n for n in self.artifact_names() if not n.startswith("gguf-")]
        if self.served not in servable:
            raise ValueError(f"served {self.served!r} is not an ONNX artifact this config builds; "
                             f"built and servable: {servable or 'none (quantize.onnx is empty)'}")
        return self


class EvalConfig(StageConfig):
    """What evaluation measures and on how much data."""

    max_new_tokens: int = Field(24, gt=0, description="Answer length budget when scoring exact match.")
    limit: int | None = Field(None, gt=0, description="Score only the first N test rows (default: all).")
    heldout_text: str | None = Field(None, description="Plain-text file (one passage per line) for held-out "
                                     "perplexity; default: the validation split rendered with the chat template.")
    heldout_limit: int | None = Field(None, gt=0, description="Score only the first N held-out passages "
                                      "(default: evaluate.limit).")
    real_text: str | None = Field(None, description="A real English text (a plain file, read whole) scored as "
                                  "perplexity_text in windows of real_text_window tokens for every artifact, "
                                  "besides the task, e.g. /usr/share/common-licenses/GPL-3 (Debian base-files).")
    real_text_window: int = Field(256, gt=8, le=8192, description="Tokens per scored window of real_text.")
    latency_requests: int = Field(8, gt=0, description="Timed generation requests per artifact.")
    latency_new_tokens: int = Field(32, gt=1, description="Tokens generated per timed request.")
    threads: int | None = Field(None, ge=1, description="Threads for onnxruntime/llama.cpp (default: all cores).")


class GateConfig(StageConfig):
    """When a candidate may be registered and given an alias."""

    min: dict[str, float] = Field({"exact_match": 0.2},
                                  description="Floors per metric of the served artifact, e.g. exact_match: 0.5.")
    max: dict[str, float] = Field({},
                                  description="Ceilings per metric of the served artifact, e.g. perplexity: 3.")
    max_degradation: dict[str, float] = Field(
        {"perplexity_increase": 0.10, "exact_match_drop": 0.10},
        description="Largest allowed loss of the served artifact versus its fp32 parent "
        "(perplexity_increase is relative, exact_match_drop absolute).")
    vs_champion: list[str] = Field(["exact_match"], description="Metrics on which the candidate must not be worse "
                                   "than the champion (re-scored on the same data in this run).")
    champion_tolerance: float = Field(0.02, ge=0, description="How much worse than the champion is still a pass "
                                      "(absolute for exact_match, relative for the others).")
    auto_promote: bool = Field(True, description="On pass, also set the champion alias (else only challenger).")

    @field_validator("min", "max", "vs_champion")
    @classmethod
    def _known_metrics(cls, value: dict[str, float] | list[str]) -> dict[str, float] | list[str]:
        unknown = [k for k in value if k not in (*SCORED, *DEGRADATION)]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join((*SCORED, *DEGRADATION))}")
        return value

    @field_validator("max_degradation")
    @classmethod
    def _known_degradations(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = [k for k in value if k not in DEGRADATION]
        if unknown:
            raise ValueError(f"unknown degradation metric(s) {unknown}; known: {', '.join(DEGRADATION)}")
        return value


class RuntimeConfig(StageConfig):
    """How the pipeline uses this machine."""

    seed: int = Field(0, ge=0, description="Random seed for data order and initialisation.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu.")
    threads: int | None = Field(None, ge=1, description="Torch CPU threads (default: SLMOPS_THREADS or torch's).")


class TryItConfig(StageConfig):
    """After a run: deploy the champion on the local target and ask it one question (openai client)."""

    deploy_local: bool = Field(False, description="Deploy the champion on the local target after the run and print "
                               "its answer to `question` (slmops demo always does).")
    port: int = Field(8080, ge=1, le=65535, description="Port of the local deployment (a free one when taken).")
    question: str = Field("Reverse: d e c a f", min_length=1, description="User message sent to the deployment.")
    max_tokens: int = Field(24, gt=0, description="Most tokens of the printed answer.")


class PipelineConfig(StageConfig):
    """The whole pipeline: data → distill → LoRA → merge → quantize → evaluate → gate → register."""

    name: str = Field("demo-slm", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="Registered model name and MLflow run-name prefix.")
    data: DataConfig
    distill: DistillConfig
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    try_it: TryItConfig = Field(default_factory=TryItConfig)

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if not self.distill.enabled and not self.finetune.enabled:
            raise ValueError("distill.enabled and finetune.enabled are both false: nothing to train")
        if self.quantize.adapter_only and (not self.finetune.enabled or self.finetune.qlora or len(self.name) > 59):
            raise ValueError("quantize.adapter_only registers the LoRA fine-tune alone as '<name>-lora': it needs "
                             "finetune.enabled, a plain LoRA (finetune.qlora: false) and a name of at most 59 "
                             "characters")
        return self


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """Parse ``dotted.key=value`` pairs; values are YAML scalars (``3``, ``true``, ``[a, b]``)."""
    parsed = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
            raise ConfigError(f"--set expects dotted.key=value, got {pair!r}")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
        parsed.append((key.strip(), value))
    return parsed


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Render pydantic errors as ``key: message`` lines naming the offending dotted key."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key (not a field of this section)" if err["type"] == "extra_forbidden" else err["msg"]
        got = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err.get('input')!r})"
        lines.append(f"  {key}: {msg}{got}")
    return f"invalid configuration in {source}:\n" + "\n".join(lines)


def validate_config(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate a raw mapping into a PipelineConfig or raise ConfigError naming every bad key."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config file, apply ``--set`` overrides, and validate it before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(raw, key, value)
    return validate_config(raw, str(path))
