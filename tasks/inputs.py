"""Resolving a config's references (``demo:`` assets, ``gguf:``/``ollama:`` imports, local folders, hub ids)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.config import PipelineConfig
from tasks.demo import resolve_ref
from tasks.model_import.refs import resolve_import
from tasks.records import ModelDir


def resolve_inputs(config: PipelineConfig, root: Path) -> PipelineConfig:
    """Copy of ``config`` with every ``demo:``, ``gguf:`` and ``ollama:`` reference replaced by its local path
    (made, or dequantized, on first use)."""
    data = config.data.model_copy(update={
        key: resolve_ref(value, root) for key in ("train", "validation", "test")
        if (value := getattr(config.data, key))
    })
    distill = config.distill.model_copy(update={
        "teacher": resolve_model(config.distill.teacher, root),
        "student": resolve_model(config.distill.student, root),
    })
    return config.model_copy(update={"data": data, "distill": distill})


def resolve_model(ref: str, root: Path) -> str:
    """A model reference as a local folder path (``demo:``, ``gguf:``, ``ollama:``), else unchanged (hub ids)."""
    return resolve_import(resolve_ref(ref, root), root)


def describe_model(ref: str) -> ModelDir:
    """Record for a model reference: a local folder is digested; a hub id is keyed by its name."""
    path = Path(ref)
    if path.is_dir():
        return ModelDir.from_path(path)
    return ModelDir(path=ref, digest=f"hub:{ref}")


resolve_inputs_task = task(resolve_inputs, name="resolve-inputs")
describe_model_task = task(describe_model, name="describe-model")
