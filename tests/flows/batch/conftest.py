"""A registered tiny model with a training-prompt profile, and batch inputs made from the tiny test split."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

MODEL = "tiny-batch"


@pytest.fixture(scope="session")
def batch_model(home: Path, tiny_assets: Path, tiny_onnx: Path) -> str:
    """``tiny-batch`` version 1 (the tiny int4 folder, with the reference profile registration stores) as champion."""
    import mlflow

    from registry.batch import store_profile
    from registry.history import move_alias
    from registry.tracking import setup_tracking
    from tasks.batch.profile import profile_training_prompts

    setup_tracking(home)
    client = MlflowClient()
    with mlflow.start_run(run_name="batch-test") as run:
        mlflow.log_artifacts(str(tiny_onnx), "served")
    client.create_registered_model(MODEL)
    client.create_model_version(MODEL, source=f"runs:/{run.info.run_id}/served", run_id=run.info.run_id)
    reference = profile_training_prompts(str(tiny_onnx), str(tiny_assets / "data" / "train.jsonl"))
    store_profile(client, MODEL, "1", reference)
    move_alias(client, MODEL, "champion", "1", reason="test")
    return MODEL
