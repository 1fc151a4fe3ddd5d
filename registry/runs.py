"""Logging a training run to MLflow: resolved config, dataset inputs, per-step losses, scores, the model."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import yaml
from prefect import task

from registry.tracking import (
    flatten,
    log_dataset,
    log_params,
    log_series,
    prefect_run_tags,
    publish_run_link,
    setup_tracking,
)
from tasks.config import PipelineConfig
from tasks.records import ModelDir, PreparedData, TrainResult


def log_training_run(root: Path, config: PipelineConfig, data: PreparedData, results: list[TrainResult],
                     scores: dict[str, float], model: ModelDir, timings: dict[str, float]) -> str:
    """Create an MLflow run holding everything about one training; return its run id."""
    setup_tracking(root)
    with mlflow.start_run(run_name=f"{config.name}-train", tags=prefect_run_tags(), log_system_metrics=True) as run:
        run_id = run.info.run_id
        log_params(run_id, flatten(config.model_dump(mode="json")))
        mlflow.set_tags({"slmops.stage": "train", "slmops.dataset_digest": data.digest,
                         "slmops.model_digest": model.digest})
        for split, source in data.sources.items():
            log_dataset(f"{config.name}-{split}", source, data.digest, context=split)
        for result in results:
            log_series(run_id, f"{result.stage}/loss", enumerate(result.losses, start=1))
            log_series(run_id, f"{result.stage}/val_loss", result.val_losses)
            mlflow.log_metric(f"{result.stage}/trainable_parameters", result.trainable_parameters)
            if result.method:
                mlflow.set_tag(f"slmops.{result.stage}.method", result.method)
        mlflow.log_metrics({f"exact_match/{name}": value for name, value in scores.items()})
        mlflow.log_metrics({f"seconds/{name}": value for name, value in timings.items()})
        mlflow.log_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), "config.yaml")
        log_hf_model(model.path)  # the trained weights, once (not again at register)
    publish_run_link(run_id)
    return run_id


def log_hf_model(path: str | Path) -> Any:
    """The Hugging Face folder ``path`` as an MLflow Model named ``model`` on the active run (the ``transformers``
    flavor, a ``text-generation`` pipeline): ``mlflow.transformers.load_model`` and ``mlflow.pyfunc`` take it."""
    # torch and transformers load here, when weights are logged, not with every command that imports the registry
    from transformers import AutoModelForCausalLM

    from tasks.modeling import load_tokenizer

    requirements = [f"{name}=={importlib.metadata.version(name)}" for name in ("transformers", "torch", "tokenizers")]
    parts = {"model": AutoModelForCausalLM.from_pretrained(path), "tokenizer": load_tokenizer(path)}
    with quiet_transformers_flavor():
        return mlflow.transformers.log_model(parts, name="model", task="text-generation",
                                             pip_requirements=requirements)


@contextlib.contextmanager
def quiet_transformers_flavor() -> Iterator[None]:
    """MLflow's transformers flavor warns that a local folder has no Hub model card or license: true, and noise."""
    flavor_log = logging.getLogger("mlflow.transformers")
    level = flavor_log.level
    flavor_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        flavor_log.setLevel(level)


log_training_run_task = task(log_training_run, name="log-training-run", retries=2, retry_delay_seconds=2)
