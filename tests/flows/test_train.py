"""The train flow end to end on tiny demo models, under a Prefect test harness, logged to MLflow (sqlite)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.cli import main
from registry.tracking import tracking_uri
from tasks.config import load_config


@pytest.fixture
def tiny_config(tiny_assets: Path, tmp_path: Path) -> Path:
    d = tiny_assets / "data"
    raw = {
        "name": "tiny-slm",
        "data": {"train": str(d / "train.jsonl"), "validation": str(d / "validation.jsonl"),
                 "test": str(d / "test.jsonl"), "max_length": 96},
        "distill": {"teacher": str(tiny_assets / "teacher"), "student": str(tiny_assets / "student-qwen2"),
                    "steps": 12, "batch_size": 16, "eval_every": 6, "learning_rate": 5e-3},
        "finetune": {"r": 4, "alpha": 8, "steps": 6, "batch_size": 16, "eval_every": 3},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_flow_logs_everything_to_mlflow(prefect_harness, tiny_config: Path, home: Path) -> None:
    from flows.train import train

    # when the flow runs on a tiny config
    summary = train(load_config(tiny_config))
    # then a merged model exists, every model was scored and each step timed
    assert (Path(summary.model.path) / "config.json").is_file()
    assert set(summary.exact_match) == {"teacher", "student", "distilled", "lora"}
    assert {"distill", "finetune", "merge", "prepare_data"} <= set(summary.seconds)
    # and the MLflow run holds params, per-step losses, dataset inputs, scores and the model folder
    client = MlflowClient(tracking_uri(home))
    run = client.get_run(summary.run_id)
    assert run.data.params["distill.steps"] == "12"
    assert run.data.tags["slmops.distill.method"] == "logit"
    assert len(client.get_metric_history(summary.run_id, "distill/loss")) == 12
    assert len(client.get_metric_history(summary.run_id, "finetune/loss")) == 6
    assert "exact_match/lora" in run.data.metrics
    assert {i.dataset.digest for i in run.inputs.dataset_inputs} == {summary.data.digest[:36]}
    assert {i.dataset.name for i in run.inputs.dataset_inputs} >= {"tiny-slm-train", "tiny-slm-test"}
    artifacts = {a.path for a in client.list_artifacts(summary.run_id, "model")}  # the run's logged model
    assert "model/MLmodel" in artifacts, "the weights are an MLflow Model (transformers flavor)"
    weights = {a.path for a in client.list_artifacts(summary.run_id, "model/model")}
    assert {"model/model/config.json", "model/model/model.safetensors"} <= weights
    assert run.info.artifact_uri.startswith("file:///")


def _task_states_of_latest_run(flow_name: str) -> dict[str, str]:
    """Task name → state name of the latest run of ``flow_name``, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        run = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                    sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        deadline = time.monotonic() + 30
        while True:  # task-run states reach the API asynchronously (as events): wait until every one has landed
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            if all(t.state is not None for t in tasks) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    return {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks}


def test_cli_train_reuses_cached_steps(prefect_harness, tiny_config: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    from flows.train import train

    first = train(load_config(tiny_config))
    # when the same config runs again through the CLI
    assert main(["train", "--config", str(tiny_config)]) == 0
    out = capsys.readouterr().out
    assert f"model: {first.model.path}" in out
    assert "exact match (lora)" in out
    # then Prefect answered every training step from its cache: those tasks did not run again
    states = _task_states_of_latest_run("train")
    assert {states[name] for name in ("distill", "finetune-lora", "merge")} == {"Cached"}, states


def test_a_changed_setting_retrains(prefect_harness, tiny_config: Path) -> None:
    from flows.train import train

    train(load_config(tiny_config))
    # when only the LoRA rank changes, distillation is reused but fine-tuning runs again
    train(load_config(tiny_config, ["finetune.r=2"]))
    states = _task_states_of_latest_run("train")
    assert states["distill"] == "Cached"
    assert states["finetune-lora"] == "Completed" and states["merge"] == "Completed"
