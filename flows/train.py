"""The ``train`` flow: prepare data → distill → LoRA fine-tune → merge, logged to MLflow."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from registry.runs import log_training_run_task
from tasks.caching import stage_dir
from tasks.config import PipelineConfig
from tasks.data.prepare import prepare_data_task
from tasks.evaluate.generation import score_exact_match_task
from tasks.inputs import describe_model_task, resolve_inputs_task
from tasks.preflight import preflight_task
from tasks.records import ModelDir, PreparedData, TrainResult
from tasks.settings import get_settings
from tasks.train.distill import distill_task
from tasks.train.finetune import check_qlora, finetune_task, merge_task


class TrainSummary(BaseModel):
    """What a training produced and how long each step took."""

    model: ModelDir
    data: PreparedData
    config: PipelineConfig
    run_id: str
    exact_match: dict[str, float]
    seconds: dict[str, float]
    adapter: ModelDir | None = None  # the LoRA adapter alone (peft folder), when fine-tuning ran
    adapter_base: ModelDir | None = None  # the model it was trained on


def timed(timings: dict[str, float], name: str, fn, *args):
    """Call ``fn(*args)`` and record its wall time under ``name``."""
    start = time.perf_counter()
    result = fn(*args)
    timings[name] = round(time.perf_counter() - start, 2)
    return result


def train_steps(config: PipelineConfig, root: Path) -> TrainSummary:
    """The training DAG as tasks inside the calling flow (shared by ``train`` and ``slm_pipeline``)."""
    check_qlora(config.finetune)
    t: dict[str, float] = {}
    cfg = timed(t, "resolve_inputs", resolve_inputs_task, config, root)
    data = timed(t, "prepare_data", prepare_data_task, cfg.data, root / "data")
    timed(t, "preflight", preflight_task, cfg, data)
    teacher, student = describe_model_task(cfg.distill.teacher), describe_model_task(cfg.distill.student)
    results: list[TrainResult] = []
    models = {"teacher": teacher, "student": student}
    current = student
    adapter = adapter_base = None
    if cfg.distill.enabled:
        out = stage_dir(root, "distill", teacher, student, data, cfg.distill, cfg.runtime)
        distilled = timed(t, "distill", distill_task, teacher, student, data, cfg.distill,
                           cfg.data.max_length, cfg.runtime, out)
        results.append(distilled)
        current = models["distilled"] = distilled.model
    if cfg.finetune.enabled:
        out = stage_dir(root, "lora", current, data, cfg.finetune, cfg.runtime)
        tuned = timed(t, "finetune", finetune_task, current, data, cfg.finetune, cfg.data.max_length,
                       cfg.runtime, out)
        results.append(tuned)
        adapter, adapter_base = tuned.model, current
        current = models["lora"] = timed(t, "merge", merge_task, current, adapter,
                                          stage_dir(root, "merged", current, adapter))
    scores = {}
    if data.test:
        for name, model in models.items():
            scores[name] = timed(t, f"exact_match_{name}", score_exact_match_task, model, data.test,
                                  cfg.runtime)
    run_id = log_training_run_task(root, cfg, data, results, scores, current, t)
    return TrainSummary(model=current, data=data, config=cfg, run_id=run_id, exact_match=scores, seconds=t,
                        adapter=adapter, adapter_base=adapter_base)


@flow(name="train", log_prints=True)
def train(config: PipelineConfig) -> TrainSummary:
    """Distil a teacher into a student, LoRA fine-tune it and merge; log everything to MLflow."""
    summary = train_steps(config, get_settings().root)
    logger = get_run_logger()
    logger.info("trained %s; exact match on test: %s; MLflow run %s", summary.model.path,
                summary.exact_match, summary.run_id)
    return summary
