"""slm_pipeline end to end on tiny demo models: register on pass; a failed gate changes no alias."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.cli import main
from registry.history import aliases, history
from registry.tracking import tracking_uri
from tasks.config import load_config


def _config(tiny_assets: Path, tmp_path: Path, name: str, **sections) -> Path:
    d = tiny_assets / "data"
    raw = {
        "name": name,
        "data": {"train": str(d / "train.jsonl"), "validation": str(d / "validation.jsonl"),
                 "test": str(d / "test.jsonl"), "max_length": 96},
        "distill": {"teacher": str(tiny_assets / "teacher"), "student": str(tiny_assets / "student-qwen2"),
                    "steps": 30, "batch_size": 16, "eval_every": 15, "learning_rate": 5e-3},
        "finetune": {"r": 4, "alpha": 8, "steps": 10, "batch_size": 16, "eval_every": 5},
        "quantize": {"onnx": ["int4", "fp32"], "int4_block_size": 16},
        "evaluate": {"limit": 16, "latency_requests": 2, "latency_new_tokens": 8, "max_new_tokens": 12},
        "gate": {"min": {}, "max_degradation": {"perplexity_increase": 0.10}, "vs_champion": ["perplexity"],
                 "champion_tolerance": 0.0},
    }
    for section, values in sections.items():
        raw[section] = raw.get(section, {}) | values
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def client(home: Path) -> MlflowClient:
    return MlflowClient(tracking_uri(home))


def _latest_state(flow_name: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as prefect:
        return prefect.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                      sort=FlowRunSort.START_TIME_DESC, limit=1)[0].state.name


def test_pipeline_registers_then_worse_candidate_fails_gate(prefect_harness, tiny_assets: Path, tmp_path: Path,
                                                             client: MlflowClient, home: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    from flows.pipeline import slm_pipeline

    # given a first run that passes: version 1 becomes challenger and champion
    good = slm_pipeline(load_config(_config(tiny_assets, tmp_path, "tiny-gated", quantize={"adapter_only": True})))
    assert good.decision.passed and good.registered.version == "1"
    # quantize.adapter_only: the fine-tune's adapter alone beside a multi-LoRA base built from its own base
    assert [(v.name, v.version) for v in good.adapter_versions] == [("tiny-gated-base", "1"), ("tiny-gated-lora", "1")]
    lora = client.get_model_version("tiny-gated-lora", "1")
    assert lora.tags["slmops.kind"] == "lora-adapter" and lora.tags["slmops.base"] == "tiny-gated-base/1"
    assert lora.source.startswith("models:/m-")  # an MLflow Model holding the adapter alone, over its base
    assert aliases(client, "tiny-gated") == {"challenger": "1", "champion": "1"}
    version = client.get_model_version("tiny-gated", "1")
    assert version.tags["slmops.dataset_digest"] == good.train.data.digest
    assert version.tags["slmops.parent_version"] == "none"
    assert {"slmops.git_commit", "slmops.teacher", "slmops.base_model", "slmops.config_digest"} <= set(version.tags)
    assert float(version.tags["metric.perplexity"]) == pytest.approx(good.report.metrics("onnx-int4")["perplexity"],
                                                                     rel=1e-4)
    assert "## Gate: PASSED" in version.description and "## Quantization" in version.description
    # the training prompts' profile is stored as the version's drift reference for batch jobs
    assert version.tags["slmops.profile"] == "profile.json"
    assert "profile.json" in {a.path for a in client.list_artifacts(good.train.run_id)}
    # the training run names the Prefect flow run that made it and holds the trained weights once
    run = client.get_run(good.train.run_id)
    assert run.data.tags["prefect.flow_run_id"] and run.data.tags["prefect.flow_run_name"]
    top = {a.path for a in client.list_artifacts(good.train.run_id)}
    assert not top & {"model", "hf"}, "no bare weight folders on the run"
    weights = mlflow.search_logged_models(filter_string=f"source_run_id = '{good.train.run_id}' AND name = 'model'",
                                          output_format="list")
    assert len(weights) == 1, "the fine-tuned weights are logged once, as an MLflow Model"
    assert {"transformers", "python_function"} <= set(mlflow.models.get_model_info(weights[0].model_uri).flavors)
    assert "served/MLmodel" in {a.path for a in client.list_artifacts(good.train.run_id, "served")}
    # the version is an MLflow Model (python_function over the served folder), its metrics on the logged model
    assert version.source.startswith("models:/m-")
    logged = mlflow.get_logged_model(version.source.removeprefix("models:/"))
    assert "python_function" in mlflow.models.get_model_info(version.source).flavors
    assert {m.key: m.value for m in logged.metrics}["exact_match"] == pytest.approx(
        good.report.metrics("onnx-int4")["exact_match"])
    # the served artifact's answers are an MLflow evaluation on the run: one trace per test row, scored
    evaluated = mlflow.search_traces(run_id=good.train.run_id, return_type="list")
    served = next(s for s in good.report.scores if s.name == "onnx-int4")
    assert len(evaluated) == len(served.rows) == 16
    assert run.data.metrics["exact_match/mean"] == pytest.approx(good.report.metrics("onnx-int4")["exact_match"])
    # the evaluation report reached people: a Prefect table artifact and the PNG plot on the MLflow run
    from prefect.artifacts import Artifact

    table = Artifact.get("evaluation")
    assert table is not None and table.type == "table" and "onnx-int4" in str(table.data)
    plots = {a.path for a in client.list_artifacts(good.train.run_id, "evaluation")}
    assert plots == {"evaluation/evaluation.png"}
    # int4 stays within the configured perplexity degradation of its fp32 parent
    assert good.report.metrics("onnx-int4")["perplexity_increase"] <= 0.10

    # when the identical config runs again through the CLI, the same model is not registered twice, and the
    # champion it is compared with is downloaded once into the per-version cache (no temp folder left behind)
    assert main(["run", "--config", str(_config(tiny_assets, tmp_path, "tiny-gated",
                                                 quantize={"adapter_only": True}))]) == 0
    out = capsys.readouterr().out
    assert "version 1 already holds this exact model: reused" in out
    assert "reused tiny-gated-lora version 1 (the LoRA adapter alone)" in out
    assert [str(v.version) for v in client.search_model_versions("name='tiny-gated-lora'")] == ["1"]
    assert [str(v.version) for v in client.search_model_versions("name='tiny-gated'")] == ["1"]
    assert [e["version"] for e in history(client, "tiny-gated")] == ["1", "1"], "no alias moved again"
    cached = home / "cache" / "registry" / "tiny-gated" / "1"
    assert (cached / "served" / "genai_config.json").is_file() and sorted(p.name for p in cached.iterdir()) == [
        "served", "served.sha256"]  # the folder, and the digest it was downloaded (and checked) as
    assert not list(home.glob("champion-*"))

    # when a much worse candidate (no distillation, one LoRA step) runs against that champion
    worse = _config(tiny_assets, tmp_path, "tiny-gated", distill={"enabled": False}, finetune={"steps": 1},
                    quantize={"adapter_only": True})
    code = main(["run", "--config", str(worse)])
    # then `slmops run` exits 3 with the reason, the flow ended GateFailed, the champion was re-scored on the same
    # data in this run, and no alias moved
    err = capsys.readouterr().err
    assert code == 3 and "gate failed; aliases unchanged: FAILED: vs_champion <= perplexity" in err
    assert "Traceback" not in err
    assert _latest_state("slm_pipeline") == "GateFailed"
    assert aliases(client, "tiny-gated") == {"challenger": "1", "champion": "1"}
    assert [e["version"] for e in history(client, "tiny-gated")] == ["1", "1"]
    runs = client.search_runs([client.get_experiment_by_name("slmops").experiment_id],
                              "tags.`slmops.gate` = 'failed'")
    assert runs, "the failed decision is recorded on its run"
    assert [str(v.version) for v in client.search_model_versions("name='tiny-gated-lora'")] == ["1"], \
        "a failed gate registers no adapter either"
    champion_ppl = runs[0].data.metrics["champion/perplexity"]
    assert champion_ppl == pytest.approx(good.report.metrics("onnx-int4")["perplexity"], rel=1e-6)
    assert runs[0].data.metrics["onnx-int4/perplexity"] > champion_ppl
