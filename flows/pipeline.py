"""``slm_pipeline``: train → quantize → evaluate → gate → register → alias, as one Prefect flow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from pydantic import BaseModel

from flows.train import TrainSummary, timed, train_steps
from registry.adapters import register_multi_lora_task
from registry.models import (
    RegisteredVersion,
    fetch_champion_task,
    git_commit,
    record_decision_task,
    register_version_task,
)
from tasks.batch.profile import profile_training_prompts_task
from tasks.caching import content_key, stage_dir
from tasks.config import PipelineConfig
from tasks.errors import ConfigError
from tasks.evaluate.gate import GateDecision, decide_task
from tasks.evaluate.report import publish_report_task
from tasks.evaluate.score import EvalReport, evaluate_task
from tasks.model_import.refs import import_record
from tasks.quantize.build import build_multi_lora_task, quantize_task
from tasks.settings import get_settings


class PipelineSummary(BaseModel):
    """Outcome of one pipeline run."""

    train: TrainSummary
    report: EvalReport
    decision: GateDecision
    registered: RegisteredVersion | None
    seconds: dict[str, float]
    adapter_versions: list[RegisteredVersion] = []  # quantize.adapter_only: the base, then the adapter alone


def lineage(summary: TrainSummary, champion_version: str | None) -> dict[str, str]:
    """Tags that let anyone trace a version back to its inputs."""
    cfg = summary.config
    tags = {"dataset_digest": summary.data.digest, "config_digest": content_key(cfg.model_dump(mode="json")),
            "git_commit": git_commit(), "parent_version": champion_version or "none",
            "teacher": cfg.distill.teacher, "base_model": cfg.distill.student,
            "model_digest": summary.model.digest}
    for role, path in (("teacher", cfg.distill.teacher), ("base_model", cfg.distill.student)):
        if record := import_record(path):  # a gguf:/ollama: import: where its weights came from
            tags |= {role: record["source"], f"{role}_gguf_sha256": record["gguf_sha256"],
                     f"{role}_gguf_quant": record["quant_type"]}
    return tags


def gate_failed(decision: GateDecision) -> State:
    """A Failed state named GateFailed whose message lists every failed check."""
    failed = [c.reason() for c in decision.checks if not c.passed]
    return Failed(name="GateFailed", message="gate failed; aliases unchanged: " + "; ".join(failed))


def pipeline_steps(config: PipelineConfig, root: Path) -> PipelineSummary:
    """The whole DAG as tasks inside the calling flow."""
    if not config.data.test:
        raise ConfigError("data.test: the pipeline needs a test split to evaluate and gate on")
    trained = train_steps(config, root)
    t = dict(trained.seconds)
    out = stage_dir(root, "quantized", trained.model, config.quantize)
    artifacts = timed(t, "quantize", quantize_task, trained.model, config.quantize, trained.data.train,
                      config.data.max_length, out)
    champion = fetch_champion_task(root, config.name)
    report = timed(t, "evaluate", evaluate_task, trained.model, artifacts, trained.data, config.evaluate,
                   config.data.max_length, champion.artifact if champion else None)
    png = publish_report_task(report, root / "reports" / trained.run_id / "evaluation.png")
    decision = decide_task(report, config.gate, config.quantize.served)
    record_decision_task(trained.run_id, report, decision, png, config.quantize.served)
    registered = None
    if decision.passed:
        profile = profile_training_prompts_task(trained.model.path, trained.data.train)
        registered = timed(t, "register", register_version_task, root, trained.run_id, trained.config,
                           trained.data, trained.model, artifacts, report, decision,
                           lineage(trained, champion.version if champion else None), profile)
    adapter_versions = []
    if decision.passed and config.quantize.adapter_only:
        adapter_versions = timed(t, "register_adapter", register_adapter_only, root, config, trained)
    return PipelineSummary(train=trained, report=report, decision=decision, registered=registered, seconds=t,
                           adapter_versions=adapter_versions)


def register_adapter_only(root: Path, config: PipelineConfig, trained: TrainSummary) -> list[RegisteredVersion]:
    """The fine-tune's adapter over its own base as a multi-LoRA folder, registered as ``<name>-base`` with the
    adapter alone as ``<name>-lora`` (tasks in this flow)."""
    name = f"{config.name}-lora"
    folder = stage_dir(root, "multi-lora", trained.adapter_base, trained.adapter, config.quantize)
    built = build_multi_lora_task(trained.adapter_base, {name: trained.adapter}, "int4", config.quantize, folder)
    return register_multi_lora_task(root, f"{config.name}-base", Path(built.path))


@flow(name="slm_pipeline")
def slm_pipeline(config: PipelineConfig) -> PipelineSummary | State:
    """Train, quantize, evaluate and gate a model; register it and set its alias only when the gate passes."""
    summary = pipeline_steps(config, get_settings().root)
    logger = get_run_logger()
    for reason in summary.decision.reasons:
        logger.info("gate %s", reason)
    if not summary.decision.passed:
        return gate_failed(summary.decision)
    reg = summary.registered
    logger.info("%s %s version %s with aliases %s", "reused identical" if reg.reused else "registered", reg.name,
                reg.version, reg.aliases)
    return summary
